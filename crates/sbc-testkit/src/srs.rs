//! A SIPREC recording server (SRS, RFC 7866) for tests: a TLS SIP server on loopback that
//! takes the gateway's recording INVITE, checks its `multipart/mixed` body, validates the
//! RFC 7865 metadata with a real XML parser ([`validate_metadata`]), answers with SDP
//! naming its own UDP port per m-line (`a=recvonly`), answers re-INVITEs and BYEs while
//! recording every request (a BYE's final metadata, with stop times, validated like an
//! INVITE's), and decrypts what arrives with the offered SDES keys.
//!
//! The schema's rules checked: namespace `urn:ietf:params:xml:ns:recording:1`; `datamode`
//! first and `complete` or `partial`; every element of the namespace one the schema
//! defines; the id attributes present and `xs:base64Binary`; every `group-ref`,
//! `session_id`, `participant_id` and `send`/`recv` naming an element of the document;
//! each `stream` with a `label`; each `participant`'s `nameID` with an `aor`; times as
//! `xs:dateTime`. Elements of other namespaces are allowed (the schema's `xs:any ##other`).

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use base64::Engine;
use sbc_media::srtp::SrtpContext;
use sbc_sip::message::{response_to, Method, SipMessage};
use sbc_sip::siprec;

use crate::media::{ctx, recv_packet};
use crate::pki::Leaf;
use crate::sip::{Callee, Peer};

/// What a valid metadata document says, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub sip_session_ids: Vec<String>,
    /// Participant AORs, in document order.
    pub aors: Vec<String>,
    /// Stream labels, in document order.
    pub labels: Vec<String>,
    /// (participant AOR, labels it sends).
    pub senders: Vec<(String, Vec<String>)>,
    pub has_stop_time: bool,
    /// The communication session's `start-time` and `stop-time` (RFC 3339 text).
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
    /// How many `participantsessionassoc` carry a `disassociate-time`.
    pub disassociated: usize,
    /// Elements of other namespaces (extensions), by local name.
    pub extensions: Vec<String>,
}

impl Metadata {
    /// True if the document has a stop time no earlier than its start time (both are
    /// `xs:dateTime` in UTC with whole seconds, so the text orders as the time does).
    pub fn stops_after_start(&self) -> bool {
        match (&self.start_time, &self.stop_time) {
            (Some(a), Some(b)) => a.len() == b.len() && a.ends_with('Z') && b >= a,
            _ => false,
        }
    }
}

const ELEMENTS: &[&str] = &[
    "recording",
    "datamode",
    "group",
    "associate-time",
    "disassociate-time",
    "session",
    "sipSessionID",
    "group-ref",
    "start-time",
    "stop-time",
    "participant",
    "nameID",
    "name",
    "participantsessionassoc",
    "stream",
    "label",
    "participantstreamassoc",
    "send",
    "recv",
];

fn base64_id(node: roxmltree::Node<'_, '_>, attr: &str) -> Result<String, String> {
    let v = node
        .attribute(attr)
        .ok_or_else(|| format!("<{}> without {attr}", node.tag_name().name()))?;
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .map_err(|_| format!("{attr}={v:?} is not xs:base64Binary"))?;
    Ok(v.to_string())
}

/// `xs:dateTime` (with a zone, as RFC 7865's examples give it).
fn date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (s.ends_with('Z') || s[19..].contains(['+', '-']))
}

fn children<'a, 'i>(
    n: roxmltree::Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    n.children().filter(move |c| {
        c.is_element()
            && c.tag_name().namespace() == Some(siprec::RECORDING_NS)
            && c.tag_name().name() == name
    })
}

fn text_of(n: roxmltree::Node<'_, '_>) -> String {
    n.text().unwrap_or("").trim().to_string()
}

/// Check `xml` against RFC 7865's rules (module docs); what it says, or the first fault.
pub fn validate_metadata(xml: &str) -> Result<Metadata, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().namespace() != Some(siprec::RECORDING_NS)
        || root.tag_name().name() != "recording"
    {
        return Err(format!(
            "root is {:?}, not recording in the RFC 7865 namespace",
            root.tag_name()
        ));
    }
    for n in root.descendants().filter(|n| n.is_element()) {
        if n.tag_name().namespace() == Some(siprec::RECORDING_NS)
            && !ELEMENTS.contains(&n.tag_name().name())
        {
            return Err(format!("<{}> is not in the schema", n.tag_name().name()));
        }
    }
    let first = root
        .children()
        .find(|c| c.is_element())
        .ok_or("empty recording")?;
    if first.tag_name().name() != "datamode"
        || !["complete", "partial"].contains(&text_of(first).as_str())
    {
        return Err("datamode must come first, complete or partial".into());
    }
    for t in root.descendants().filter(|n| {
        n.is_element()
            && [
                "associate-time",
                "disassociate-time",
                "start-time",
                "stop-time",
            ]
            .contains(&n.tag_name().name())
    }) {
        if !date_time(&text_of(t)) {
            return Err(format!(
                "<{}> {:?} is not xs:dateTime",
                t.tag_name().name(),
                text_of(t)
            ));
        }
    }
    let mut groups = HashSet::new();
    for g in children(root, "group") {
        groups.insert(base64_id(g, "group_id")?);
    }
    let mut meta = Metadata::default();
    let mut sessions = HashSet::new();
    for s in children(root, "session") {
        sessions.insert(base64_id(s, "session_id")?);
        for r in children(s, "group-ref") {
            if !groups.contains(&text_of(r)) {
                return Err(format!("group-ref {:?} names no group", text_of(r)));
            }
        }
        meta.sip_session_ids
            .extend(children(s, "sipSessionID").map(text_of));
        meta.has_stop_time |= children(s, "stop-time").next().is_some();
        meta.start_time = children(s, "start-time").next().map(text_of);
        meta.stop_time = children(s, "stop-time").next().map(text_of);
    }
    let mut participants = HashMap::new();
    for p in children(root, "participant") {
        let id = base64_id(p, "participant_id")?;
        let aor = children(p, "nameID")
            .next()
            .and_then(|n| n.attribute("aor"))
            .ok_or("participant without nameID aor")?;
        if !aor.contains(':') {
            return Err(format!("aor {aor:?} is not a URI"));
        }
        meta.aors.push(aor.to_string());
        participants.insert(id, aor.to_string());
    }
    let mut streams = HashMap::new();
    for s in children(root, "stream") {
        let id = base64_id(s, "stream_id")?;
        if !sessions.contains(&base64_id(s, "session_id")?) {
            return Err("stream names no session".into());
        }
        let label = children(s, "label")
            .next()
            .map(text_of)
            .ok_or("stream without label")?;
        meta.labels.push(label.clone());
        streams.insert(id, label);
    }
    for a in children(root, "participantsessionassoc") {
        if !participants.contains_key(&base64_id(a, "participant_id")?)
            || !sessions.contains(&base64_id(a, "session_id")?)
        {
            return Err("participantsessionassoc names an unknown participant or session".into());
        }
        if children(a, "disassociate-time").next().is_some() {
            meta.disassociated += 1;
        }
    }
    for a in children(root, "participantstreamassoc") {
        let aor = participants
            .get(&base64_id(a, "participant_id")?)
            .ok_or("participantstreamassoc names no participant")?
            .clone();
        let mut sends = Vec::new();
        for dir in ["send", "recv"] {
            for r in children(a, dir) {
                let label = streams
                    .get(&text_of(r))
                    .ok_or_else(|| format!("{dir} {:?} names no stream", text_of(r)))?;
                if dir == "send" {
                    sends.push(label.clone());
                }
            }
        }
        meta.senders.push((aor, sends));
    }
    meta.extensions = root
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().namespace() != Some(siprec::RECORDING_NS))
        .map(|n| n.tag_name().name().to_string())
        .collect();
    Ok(meta)
}

/// One recorded stream as the SRS took it: its label, its socket, its SDES key.
pub struct SrsStream {
    pub label: String,
    pub socket: UdpSocket,
    /// (suite, key || salt) from the offer's `a=crypto`; `None` for plain RTP.
    pub crypto: Option<Crypto>,
    pub inactive: bool,
}

/// An SDES suite and its key || salt.
type Crypto = (String, Vec<u8>);

/// One offered m-line: (label, crypto, inactive).
type OfferLine = (String, Option<Crypto>, bool);

/// The SRS's view of one offer: its m-lines with labels, keys and directions.
fn offer_lines(sdp: &str) -> Vec<OfferLine> {
    let mut out: Vec<OfferLine> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            out.push((String::new(), None, false));
        }
        let Some(cur) = out.last_mut() else { continue };
        if let Some(l) = line.strip_prefix("a=label:") {
            cur.0 = l.to_string();
        } else if let Some(c) = line.strip_prefix("a=crypto:") {
            let mut it = c.split_whitespace().skip(1);
            let suite = it.next().unwrap_or_default().to_string();
            let key = it
                .next()
                .and_then(|k| k.strip_prefix("inline:"))
                .and_then(|k| {
                    base64::engine::general_purpose::STANDARD
                        .decode(k.split('|').next()?)
                        .ok()
                })
                .unwrap_or_default();
            cur.1 = Some((suite, key));
        } else if line == "a=inactive" {
            cur.2 = true;
        }
    }
    out
}

/// A TLS SRS on loopback.
pub struct Srs {
    server: Callee,
    pub addr: SocketAddr,
}

/// The SRS's side of one connection from the gateway.
pub struct SrsSession {
    pub peer: Peer,
    /// Every request received, in order.
    pub requests: Vec<SipMessage>,
    /// Every metadata document received, validated.
    pub metadata: Vec<Metadata>,
    pub streams: Vec<SrsStream>,
    contexts: HashMap<String, SrtpContext>,
}

impl Srs {
    pub async fn new(leaf: &Leaf) -> Srs {
        let server = Callee::new(leaf).await;
        let addr = server.addr;
        Srs { server, addr }
    }

    /// Accept the gateway's connection.
    pub async fn accept(&self) -> SrsSession {
        SrsSession {
            peer: self.server.accept().await,
            requests: Vec::new(),
            metadata: Vec::new(),
            streams: Vec::new(),
            contexts: HashMap::new(),
        }
    }
}

impl SrsSession {
    /// Take the next request; an INVITE (initial or re-) is checked and answered 200 with
    /// our ports, a BYE 200, an ACK absorbed. Returns the request.
    pub async fn serve_next(&mut self) -> SipMessage {
        let req = self.peer.recv_where(|m| m.is_request()).await;
        self.requests.push(req.clone());
        match req.method() {
            Some(Method::Invite) => self.answer_invite(&req).await,
            Some(Method::Bye) => {
                self.read_final_metadata(&req);
                self.peer
                    .send(&response_to(&req, 200, "OK", Some("srs-tag")))
                    .await
            }
            _ => {}
        }
        req
    }

    /// A BYE's body, if any, is the final metadata snapshot (RFC 7865, with stop times):
    /// validated and kept like an INVITE's.
    fn read_final_metadata(&mut self, req: &SipMessage) {
        if req.body().is_empty() {
            return;
        }
        assert_eq!(
            req.header("content-type"),
            Some(siprec::METADATA_TYPE),
            "a BYE body is metadata"
        );
        let xml = std::str::from_utf8(req.body()).expect("UTF-8 body");
        self.metadata.push(
            validate_metadata(xml).unwrap_or_else(|e| panic!("final metadata invalid: {e}\n{xml}")),
        );
    }

    async fn answer_invite(&mut self, req: &SipMessage) {
        assert_eq!(
            req.header("require"),
            Some(siprec::OPTION_TAG),
            "Require: siprec"
        );
        assert!(
            req.header("contact")
                .is_some_and(|c| c.contains("+sip.src")),
            "+sip.src"
        );
        let ctype = req.header("content-type").expect("Content-Type");
        let body = std::str::from_utf8(req.body()).expect("UTF-8 body");
        let parts = split_multipart(ctype, body).expect("multipart/mixed");
        let sdp = parts
            .iter()
            .find(|(t, _)| t == "application/sdp")
            .expect("SDP part")
            .1;
        let xml = parts
            .iter()
            .find(|(t, _)| t == siprec::METADATA_TYPE)
            .expect("metadata part")
            .1;
        self.metadata.push(
            validate_metadata(xml).unwrap_or_else(|e| panic!("metadata invalid: {e}\n{xml}")),
        );
        let lines = offer_lines(sdp);
        if self.streams.len() != lines.len() {
            self.streams = lines
                .iter()
                .map(|(label, crypto, _)| {
                    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                    socket
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    SrsStream {
                        label: label.clone(),
                        socket,
                        crypto: crypto.clone(),
                        inactive: false,
                    }
                })
                .collect();
        }
        let mut answer =
            "v=0\r\no=srs 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                .to_string();
        for (s, (_, _, inactive)) in self.streams.iter_mut().zip(&lines) {
            s.inactive = *inactive;
            let port = s.socket.local_addr().expect("addr").port();
            let dir = if *inactive { "inactive" } else { "recvonly" };
            answer.push_str(&format!("m=audio {port} RTP/SAVP 0\r\na={dir}\r\n"));
        }
        let mut ok = response_to(req, 200, "OK", Some("srs-tag"));
        ok.push_header("Contact", format!("<sips:srs@{}>", self.peer_addr_hint()));
        ok.push_header("Content-Type", "application/sdp");
        ok.set_body(answer.into_bytes());
        self.peer.send(&ok).await;
    }

    fn peer_addr_hint(&self) -> String {
        "127.0.0.1".to_string()
    }

    /// The next packet of the stream labelled `label`, decrypted with the offered key
    /// (as it is, for plain RTP); `None` if none came within 2 s.
    pub fn recv_clear(&mut self, label: &str) -> Option<Vec<u8>> {
        let s = self.streams.iter().find(|s| s.label == label)?;
        let mut p = recv_packet(&s.socket)?;
        let Some((suite, key)) = &s.crypto else {
            return Some(p);
        };
        let c = self
            .contexts
            .entry(label.to_string())
            .or_insert_with(|| ctx(suite, key));
        let n = c.unprotect_rtp(&mut p).ok()?;
        p.truncate(n);
        Some(p)
    }
}

/// The parts of a `multipart/mixed` body: (Content-Type, body) each. `None` if the
/// boundary parameter is missing or the body has no closing delimiter. The test SRS's own
/// reading, written apart from the gateway's parser so that a fault there cannot hide one
/// in what the gateway sends.
pub fn split_multipart<'a>(content_type: &str, body: &'a str) -> Option<Vec<(String, &'a str)>> {
    let boundary = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"'))?;
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body.split_once(&delim)?.1;
    loop {
        if rest.starts_with("--") {
            return Some(parts);
        }
        let (part, next) = rest.split_once(&delim)?;
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let (head, content) = part.split_once("\r\n\r\n")?;
        let ctype = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        parts.push((ctype, content.strip_suffix("\r\n").unwrap_or(content)));
        rest = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbc_core::media::LegSide;
    use sbc_core::redact::Redaction;
    use siprec::{Gap, MetaStream, Metadata as Doc, Participant};
    use std::time::UNIX_EPOCH;

    fn doc(gap: bool) -> String {
        let caller =
            Participant::from_header("\"Alice\" <sips:+14155550123@a.example>", Redaction::Off);
        let callee = Participant::from_header("<sips:+15551234@b.example>", Redaction::Hash);
        let streams = [
            MetaStream {
                label: 1,
                sender: LegSide::Caller,
            },
            MetaStream {
                label: 2,
                sender: LegSide::Callee,
            },
        ];
        let start = UNIX_EPOCH + Duration::from_secs(1_796_385_681);
        siprec::metadata_xml(&Doc {
            ids: [0x1234, 0x5678],
            session_id: "ab30317f1a784dc48ff824d0d3715d86;remote=00000000000000000000000000000000",
            caller: &caller,
            callee: &callee,
            streams: &streams,
            start,
            stop: Some(start + Duration::from_secs(5)),
            gap: gap.then_some(Gap {
                previous: 7,
                from: start,
                until: start,
            }),
        })
    }

    #[test]
    fn the_gateways_metadata_is_valid_rfc_7865() {
        let m = validate_metadata(&doc(true)).expect("valid");
        assert_eq!(m.labels, vec!["1", "2"]);
        assert_eq!(m.aors[0], "sips:+14155550123@a.example");
        assert!(m.aors[1].starts_with("sips:%23"), "hashed: {}", m.aors[1]);
        assert_eq!(m.senders[0].1, vec!["1"], "the caller sends stream 1");
        assert_eq!(m.senders[1].1, vec!["2"]);
        assert!(m.has_stop_time);
        assert_eq!(m.start_time.as_deref(), Some("2026-12-04T12:01:21Z"));
        assert_eq!(m.stop_time.as_deref(), Some("2026-12-04T12:01:26Z"));
        assert!(m.stops_after_start());
        assert_eq!(m.disassociated, 2);
        let reversed = Metadata {
            start_time: m.stop_time.clone(),
            stop_time: m.start_time.clone(),
            ..m.clone()
        };
        assert!(!reversed.stops_after_start());
        assert_eq!(m.extensions.first().map(String::as_str), Some("gap"));
        assert_eq!(m.sip_session_ids.len(), 1);
    }

    #[test]
    fn broken_documents_are_refused() {
        let good = doc(false);
        let label = good
            .split("<send>")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_string();
        let cases = [
            good.replace(siprec::RECORDING_NS, "urn:example:other"),
            good.replacen(&format!("<send>{label}</send>"), "<send>AAAA</send>", 1),
            good.replace("<label>1</label>", ""),
            good.replace("<datamode>complete</datamode>", "<datamode>most</datamode>"),
            good.replace("2026-12-04T12:01:21Z", "yesterday"),
            good.replace("<label>2</label>", "<label>2</label><colour>red</colour>"),
            good.replacen("participant_id=\"", "participant_id=\"!", 1),
            good.replace("</recording>", ""),
        ];
        for (i, bad) in cases.iter().enumerate() {
            assert!(validate_metadata(bad).is_err(), "case {i} accepted:\n{bad}");
        }
    }

    #[test]
    fn offers_are_read_per_line() {
        let sdp = "v=0\r\nm=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\na=label:1\r\na=sendonly\r\nm=audio 2 RTP/AVP 0\r\na=label:2\r\na=inactive\r\n";
        let l = offer_lines(sdp);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].0, "1");
        assert_eq!(l[0].1.as_ref().map(|c| c.1.len()), Some(30));
        assert!(!l[0].2 && l[1].2 && l[1].1.is_none());
    }
}
