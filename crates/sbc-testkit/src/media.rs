//! Media in a test: RTP packets ([`rtp`], [`Rtp`]), SDP offers and answers ([`Sdp`],
//! [`parse_sdp`], [`with_sdp`]), SRTP contexts and loopback UDP peers ([`ctx`],
//! [`send_srtp`], [`recv_srtp`]), and a media engine on a port range ([`engine`]).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use base64::Engine as _;
use rand::Rng;
use sbc_core::media::{CallRef, LegPolicy, LegSide, MediaControl, MediaPolicy, SrtpMode};
use sbc_core::tenant::TenantId;
use sbc_media::engine::{MediaEngine, MediaSettings};
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};
use sbc_sip::message::SipMessage;

/// How long a test waits for a packet (the read timeout of [`peer`] sockets).
pub const PACKET_WAIT: Duration = Duration::from_secs(2);

/// Tailroom a protected packet may need beyond the clear one (auth tag and MKI).
const SRTP_TAILROOM: usize = 64;

// ---------------------------------------------------------------- RTP

/// A clear RTP packet: version 2, payload type 0, timestamp `seq * 160` (sbc-probe's
/// builder, the one `sbc-edge call` sends with).
pub fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    sbc_probe::rtp::packet(seq, ssrc, payload)
}

/// An RTP packet to build: payload type, timestamp, CSRCs and a header extension can be
/// set; the defaults are those of [`rtp`].
#[derive(Debug, Clone)]
pub struct Rtp {
    seq: u16,
    ssrc: u32,
    payload_type: u8,
    timestamp: u32,
    csrcs: u8,
    extension: bool,
    payload: Vec<u8>,
}

impl Rtp {
    pub fn new(seq: u16, ssrc: u32) -> Rtp {
        Rtp {
            seq,
            ssrc,
            payload_type: 0,
            timestamp: u32::from(seq) * 160,
            csrcs: 0,
            extension: false,
            payload: Vec::new(),
        }
    }

    pub fn payload_type(mut self, pt: u8) -> Rtp {
        self.payload_type = pt;
        self
    }

    pub fn timestamp(mut self, ts: u32) -> Rtp {
        self.timestamp = ts;
        self
    }

    /// `n` CSRCs, the i-th being `[i, i, i, i]`.
    pub fn csrcs(mut self, n: u8) -> Rtp {
        self.csrcs = n;
        self
    }

    /// A one-word RFC 8285 one-byte header extension when `on`.
    pub fn extension(mut self, on: bool) -> Rtp {
        self.extension = on;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Rtp {
        self.payload = payload.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut p = vec![0x80 | self.csrcs, self.payload_type];
        if self.extension {
            p[0] |= 0x10;
        }
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.timestamp.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        for c in 0..self.csrcs {
            p.extend_from_slice(&[c, c, c, c]);
        }
        if self.extension {
            p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        }
        p.extend_from_slice(&self.payload);
        p
    }

    /// The packet followed by `tailroom` zero bytes, and the packet's length.
    pub fn build_with_tailroom(&self, tailroom: usize) -> (Vec<u8>, usize) {
        let mut p = self.build();
        let len = p.len();
        p.resize(len + tailroom, 0);
        (p, len)
    }
}

/// A random SRTCP-shaped packet (sender report type, 1 to 39 words of random body) for
/// interop cross-checks; the same `rng` state gives the same packet.
pub fn random_rtcp(rng: &mut impl Rng, ssrc: u32) -> Vec<u8> {
    let words = rng.gen_range(1..40u16);
    let mut p = vec![0x80, 200];
    p.extend_from_slice(&words.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..usize::from(words) * 4).map(|_| rng.gen::<u8>()));
    p
}

// ---------------------------------------------------------------- SDP

/// An SDP offer or answer from a peer: one audio stream (payload type 0, PCMU) at
/// 127.0.0.1 over RTP/SAVP, plus what the builder methods add. Attributes come out in a
/// fixed order: rtpmap, fmtp, ptime, sendrecv, rtcp-mux, crypto.
#[derive(Debug, Clone)]
pub struct Sdp {
    addr: String,
    port: u16,
    plain: bool,
    telephone_event: bool,
    telephone_event_fmtp: bool,
    ptime: bool,
    sendrecv: bool,
    rtcp_mux: bool,
    crypto: Vec<String>,
}

impl Sdp {
    pub fn audio(port: u16) -> Sdp {
        Sdp {
            addr: "127.0.0.1".to_string(),
            port,
            plain: false,
            telephone_event: false,
            telephone_event_fmtp: false,
            ptime: false,
            sendrecv: false,
            rtcp_mux: false,
            crypto: Vec::new(),
        }
    }

    /// The address in `o=` and `c=`.
    pub fn addr(mut self, addr: &str) -> Sdp {
        self.addr = addr.to_string();
        self
    }

    /// RTP/AVP instead of RTP/SAVP.
    pub fn plain(mut self) -> Sdp {
        self.plain = true;
        self
    }

    /// Payload type 101 (telephone-event) as well; with `fmtp`, its `a=fmtp:101 0-16`.
    pub fn telephone_event(mut self, fmtp: bool) -> Sdp {
        self.telephone_event = true;
        self.telephone_event_fmtp = fmtp;
        self
    }

    /// `a=ptime:20`.
    pub fn ptime(mut self) -> Sdp {
        self.ptime = true;
        self
    }

    /// `a=sendrecv`.
    pub fn sendrecv(mut self) -> Sdp {
        self.sendrecv = true;
        self
    }

    /// `a=rtcp-mux`.
    pub fn rtcp_mux(mut self) -> Sdp {
        self.rtcp_mux = true;
        self
    }

    /// An `a=crypto` line with `key` (master key then salt) inline.
    pub fn crypto(mut self, tag: u32, suite: &str, key: &[u8]) -> Sdp {
        self.crypto
            .push(format!("a=crypto:{tag} {suite} inline:{}\r\n", b64(key)));
        self
    }

    /// An `a=crypto` line whose key carries a lifetime (`inline:KEY|lifetime`).
    pub fn crypto_with_lifetime(
        mut self,
        tag: u32,
        suite: &str,
        key: &[u8],
        lifetime: &str,
    ) -> Sdp {
        self.crypto.push(format!(
            "a=crypto:{tag} {suite} inline:{}|{lifetime}\r\n",
            b64(key)
        ));
        self
    }

    pub fn build(&self) -> String {
        let Sdp { addr, port, .. } = self;
        let proto = if self.plain { "RTP/AVP" } else { "RTP/SAVP" };
        let pts = if self.telephone_event { "0 101" } else { "0" };
        let mut s = format!(
            "v=0\r\no=peer 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
m=audio {port} {proto} {pts}\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        if self.telephone_event {
            s.push_str("a=rtpmap:101 telephone-event/8000\r\n");
        }
        if self.telephone_event_fmtp {
            s.push_str("a=fmtp:101 0-16\r\n");
        }
        if self.ptime {
            s.push_str("a=ptime:20\r\n");
        }
        if self.sendrecv {
            s.push_str("a=sendrecv\r\n");
        }
        if self.rtcp_mux {
            s.push_str("a=rtcp-mux\r\n");
        }
        for c in &self.crypto {
            s.push_str(c);
        }
        s
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.build().into_bytes()
    }
}

/// One `a=crypto` line: tag, suite, key material (master key then salt).
pub type Crypto = (u32, String, Vec<u8>);

/// What a test reads back from an SDP the gateway wrote.
#[derive(Debug, Clone)]
pub struct ParsedSdp {
    /// The `c=IN IP4` address (empty when there is none).
    pub addr: String,
    /// The `m=audio` port.
    pub port: u16,
    pub crypto: Vec<Crypto>,
}

impl ParsedSdp {
    /// Tag and key of the first crypto line offering `suite`; panics when there is none.
    pub fn crypto_for(&self, suite: &str) -> (u32, Vec<u8>) {
        let (tag, _, key) = self
            .crypto
            .iter()
            .find(|(_, s, _)| s == suite)
            .unwrap_or_else(|| panic!("{suite} offered"));
        (*tag, key.clone())
    }
}

/// Reads address, audio port and crypto lines; panics without `m=audio`. Keys may be
/// padded base64 (RFC 4568) or not (rtpengine leaves the padding off).
pub fn parse_sdp(body: &[u8]) -> ParsedSdp {
    let text = std::str::from_utf8(body).unwrap();
    let mut addr = String::new();
    let mut port = 0;
    let mut crypto = Vec::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            addr = c.trim().to_string();
        } else if let Some(m) = line.strip_prefix("m=audio ") {
            port = m.split_whitespace().next().unwrap().parse().unwrap();
        } else if let Some(c) = line.strip_prefix("a=crypto:") {
            let mut parts = c.split_whitespace();
            let tag = parts.next().unwrap().parse().unwrap();
            let suite = parts.next().unwrap().to_string();
            let inline = parts.next().unwrap().strip_prefix("inline:").unwrap();
            let key = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(inline.split('|').next().unwrap().trim_end_matches('='))
                .unwrap();
            crypto.push((tag, suite, key));
        }
    }
    assert_ne!(port, 0, "SDP without m=audio:\n{text}");
    ParsedSdp { addr, port, crypto }
}

/// `m` with `body` as its SDP.
pub fn with_sdp(mut m: SipMessage, body: &str) -> SipMessage {
    m.set_header("Content-Type", "application/sdp");
    m.set_body(body.as_bytes().to_vec());
    m
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn b64_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// A master key as SDES carries it: key then salt.
pub fn master_bytes(key: &MasterKey) -> Vec<u8> {
    let mut v = key.key.clone();
    v.extend_from_slice(&key.salt);
    v
}

// ---------------------------------------------------------------- SRTP and UDP

/// An SRTP context for `suite` keyed with `key` (master key then salt).
pub fn ctx(suite: &str, key: &[u8]) -> SrtpContext {
    let profile: SrtpProfile = suite.parse().unwrap();
    ctx_for(
        profile,
        &MasterKey::from_concatenated(profile, key).unwrap(),
    )
}

/// An SRTP context for `profile` with `key`, default configuration.
pub fn ctx_for(profile: SrtpProfile, key: &MasterKey) -> SrtpContext {
    SrtpContext::new(profile, key, SrtpConfig::default()).unwrap()
}

/// A UDP socket on loopback that waits at most [`PACKET_WAIT`] for a packet.
pub fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(PACKET_WAIT)).unwrap();
    s
}

/// Protects the clear RTP packet `pkt` with `c` and sends it to 127.0.0.1:`port`.
pub fn send_srtp(sock: &UdpSocket, c: &mut SrtpContext, pkt: &[u8], port: u16) {
    let mut buf = vec![0u8; pkt.len() + SRTP_TAILROOM];
    buf[..pkt.len()].copy_from_slice(pkt);
    let n = c.protect_rtp(&mut buf, pkt.len()).unwrap();
    sock.send_to(&buf[..n], ("127.0.0.1", port)).unwrap();
}

/// The next datagram, or None when none came within the socket's read timeout.
pub fn recv_packet(sock: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec())
}

/// The next datagram unprotected with `c`: the clear RTP packet. Panics when none comes
/// or it does not authenticate.
pub fn recv_srtp(sock: &UdpSocket, c: &mut SrtpContext) -> Vec<u8> {
    let mut p = recv_packet(sock).expect("a relayed packet");
    let n = c.unprotect_rtp(&mut p).expect("authenticates");
    p.truncate(n);
    p
}

// ---------------------------------------------------------------- an SRTP call

/// The one suite an [`SrtpCall`] uses on both legs.
pub const SRTP_CALL_PROFILE: SrtpProfile = SrtpProfile::AesCm128HmacSha1_80;

/// SRTP required on both legs with [`SRTP_CALL_PROFILE`] only, and a tenant bandwidth
/// limit (`bandwidth_kbps`, 0: none).
pub fn srtp_call_policy(bandwidth_kbps: u32) -> MediaPolicy {
    let leg = || LegPolicy {
        srtp: SrtpMode::Required,
        suites: vec![SRTP_CALL_PROFILE.as_str().to_string()],
    };
    MediaPolicy {
        caller: leg(),
        callee: leg(),
        bandwidth_kbps,
        ..MediaPolicy::default()
    }
}

/// A peer's SDP: PCMU (and telephone-event with `0-16`, if asked) at `sock`'s port,
/// rtcp-mux, one [`SRTP_CALL_PROFILE`] key.
pub fn srtp_call_sdp(sock: &UdpSocket, key: &MasterKey, telephone_event: bool) -> Vec<u8> {
    let mut sdp = Sdp::audio(sock.local_addr().unwrap().port());
    if telephone_event {
        sdp = sdp.telephone_event(true);
    }
    sdp.rtcp_mux()
        .crypto(1, SRTP_CALL_PROFILE.as_str(), &master_bytes(key))
        .bytes()
}

/// An SRTP call through a media engine on loopback, set up in two steps so a test can act
/// between the caller's offer and the callee's answer (or in one, [`SrtpCall::setup`]).
/// The callee answers PCMU only.
#[derive(Debug)]
pub struct SrtpCall {
    pub id: CallRef,
    pub caller: UdpSocket,
    pub callee: UdpSocket,
    /// The engine's caller-facing address (from its answer; `None` before it).
    pub caller_side: Option<SocketAddr>,
    /// The engine's callee-facing address (from its offer).
    pub callee_side: SocketAddr,
    /// The caller's and callee's own master keys (fixed, so a test can re-offer).
    pub caller_key: MasterKey,
    pub callee_key: MasterKey,
    /// caller -> engine, engine -> callee, callee -> engine, engine -> caller.
    pub k1: SrtpContext,
    pub k2: SrtpContext,
    pub k3: SrtpContext,
    pub k4: Option<SrtpContext>,
}

impl SrtpCall {
    /// The caller offers (with telephone-event if asked) on `tenant`'s call `id`.
    pub fn offer(
        e: &dyn MediaControl,
        id: CallRef,
        tenant: &str,
        policy: &MediaPolicy,
        telephone_event: bool,
    ) -> SrtpCall {
        let (caller, callee) = (peer(), peer());
        let caller_key = MasterKey::new(&[0x11; 16], &[0x12; 14]);
        let callee_key = MasterKey::new(&[0x33; 16], &[0x34; 14]);
        let sdp = srtp_call_sdp(&caller, &caller_key, telephone_event);
        let out = e
            .offer(id, &TenantId::from(tenant), LegSide::Caller, &sdp, policy)
            .unwrap();
        let offer = sbc_media::sdp::parse(&out).unwrap();
        let k2 = offer.media[0].crypto[0].key.clone().unwrap();
        SrtpCall {
            id,
            caller_side: None,
            callee_side: SocketAddr::from(([127, 0, 0, 1], offer.media[0].port)),
            k1: ctx_for(SRTP_CALL_PROFILE, &caller_key),
            k2: ctx_for(SRTP_CALL_PROFILE, &k2),
            k3: ctx_for(SRTP_CALL_PROFILE, &callee_key),
            k4: None,
            caller,
            callee,
            caller_key,
            callee_key,
        }
    }

    /// The callee answers.
    pub fn answer(&mut self, e: &dyn MediaControl) {
        let sdp = srtp_call_sdp(&self.callee, &self.callee_key, false);
        let out = e.answer(self.id, LegSide::Callee, &sdp).unwrap();
        let answer = sbc_media::sdp::parse(&out).unwrap();
        let k4 = answer.media[0].crypto[0].key.clone().unwrap();
        self.k4 = Some(ctx_for(SRTP_CALL_PROFILE, &k4));
        self.caller_side = Some(SocketAddr::from(([127, 0, 0, 1], answer.media[0].port)));
    }

    /// Offer and answer in one step (no telephone-event).
    pub fn setup(e: &dyn MediaControl, id: CallRef, tenant: &str, policy: &MediaPolicy) -> Self {
        let mut c = SrtpCall::offer(e, id, tenant, policy, false);
        c.answer(e);
        c
    }

    /// The caller sends `pkt` (clear RTP); returns what the callee got, decrypted.
    pub fn caller_to_callee(&mut self, pkt: &[u8]) -> Vec<u8> {
        let to = self.caller_side.expect("the callee answered");
        send_srtp(&self.caller, &mut self.k1, pkt, to.port());
        recv_srtp(&self.callee, &mut self.k2)
    }

    /// The callee sends `pkt`; returns what the caller got, decrypted.
    pub fn callee_to_caller(&mut self, pkt: &[u8]) -> Vec<u8> {
        send_srtp(&self.callee, &mut self.k3, pkt, self.callee_side.port());
        let k4 = self.k4.as_mut().expect("the callee answered");
        recv_srtp(&self.caller, k4)
    }
}

/// A media engine on 127.0.0.1 with two workers, on a free range of `ports` ports
/// ([`crate::ports::free_udp_range`]).
pub fn engine(ports: u16, timeout: Duration) -> MediaEngine {
    let lo = "127.0.0.1".parse().unwrap();
    let (port_min, port_max) = crate::ports::free_udp_range(ports);
    let mut s = MediaSettings::new(lo, lo, port_min, port_max);
    s.media_timeout = timeout;
    s.workers = 2;
    MediaEngine::start(s).unwrap()
}
