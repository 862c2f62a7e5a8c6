//! SIPREC bodies (RFC 7866 / RFC 7865), pure: the SRC's SDP offer (one `a=sendonly` or
//! `a=inactive` m-line per recorded stream, `a=label`), the recording metadata document
//! (`application/rs-metadata+xml`), the `multipart/mixed` body that carries both, and the
//! reading of an SRS's SDP answer (one destination per m-line).
//!
//! Owns: the text of these bodies and the parsing of the answer. Must not: hold state,
//! read a clock (times come in), draw randomness (ids come in) or log key material (an
//! offer carries SDES keys: it is built into the body and nowhere else).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use sbc_core::media::LegSide;
use sbc_core::recording::RtpFormat;
use sbc_core::redact::Redaction;
use sbc_core::tap::TapSuite;

use crate::message::{parse_name_addr, parse_uri};

/// The RFC 7865 namespace.
pub const RECORDING_NS: &str = "urn:ietf:params:xml:ns:recording:1";
/// Our namespace for extension elements (RFC 7865's schema allows `xs:any ##other`): the
/// gap a failover left in the recording.
pub const EXTENSION_NS: &str = "urn:x-sbc-edge:recording:1";
/// The metadata's content type (RFC 7865 §9).
pub const METADATA_TYPE: &str = "application/rs-metadata+xml";
/// The option tag an SRC requires (RFC 7866 §6.1.1... §12.2).
pub const OPTION_TAG: &str = "siprec";

/// One recorded stream in the offer.
#[derive(Debug, Clone, Copy)]
pub struct OfferStream<'a> {
    /// `a=label` (also the metadata stream's label).
    pub label: u32,
    /// The fork's source address: `c=` and the m-line port.
    pub local: SocketAddr,
    /// SDES inline key and its suite, for SRTP (`None`: plain RTP).
    pub crypto: Option<(TapSuite, &'a str)>,
    pub formats: &'a [RtpFormat],
    /// False: `a=inactive` (paused or held), true: `a=sendonly`.
    pub active: bool,
}

fn addr_type(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

/// The SRC's SDP offer: session `id`, `version` (bumped on every re-offer, RFC 3264 §8).
pub fn sdp_offer(id: u64, version: u64, streams: &[OfferStream<'_>]) -> String {
    let origin = streams
        .first()
        .map(|s| s.local.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut s = format!(
        "v=0\r\no=sbc-edge {id} {version} IN {} {origin}\r\ns=SIPREC\r\nt=0 0\r\n",
        addr_type(origin)
    );
    for st in streams {
        let proto = if st.crypto.is_some() {
            "RTP/SAVP"
        } else {
            "RTP/AVP"
        };
        let pts: Vec<String> = st
            .formats
            .iter()
            .map(|f| f.payload_type.to_string())
            .collect();
        let pts = if pts.is_empty() {
            "0".to_string()
        } else {
            pts.join(" ")
        };
        let ip = st.local.ip();
        let _ = write!(
            s,
            "m=audio {} {proto} {pts}\r\nc=IN {} {ip}\r\n",
            st.local.port(),
            addr_type(ip)
        );
        for f in st.formats {
            let _ = write!(
                s,
                "a=rtpmap:{} {}/{}",
                f.payload_type, f.encoding, f.clock_rate
            );
            if let Some(ch) = f.channels {
                let _ = write!(s, "/{ch}");
            }
            s.push_str("\r\n");
            if let Some(p) = &f.fmtp {
                let _ = write!(s, "a=fmtp:{} {p}\r\n", f.payload_type);
            }
        }
        if let Some((suite, key)) = st.crypto {
            let _ = write!(s, "a=crypto:1 {} {key}\r\n", suite.as_str());
        }
        let dir = if st.active { "sendonly" } else { "inactive" };
        let _ = write!(s, "a=label:{}\r\na={dir}\r\n", st.label);
    }
    s
}

/// Why an SRS's answer cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no SDP in the answer")]
    NoSdp,
    #[error("the answer has {got} m-lines, the offer {want}")]
    StreamCount { got: usize, want: usize },
    #[error("an m-line has no usable connection address")]
    NoAddress,
}

/// Per m-line of an SRS's SDP answer, where it wants the stream (`None`: port 0, the
/// stream refused, RFC 3264 §6). `offered` is the number of m-lines offered.
pub fn parse_answer(sdp: &str, offered: usize) -> Result<Vec<Option<SocketAddr>>, AnswerError> {
    let mut session_c: Option<IpAddr> = None;
    let mut lines: Vec<(u16, Option<IpAddr>)> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            let port = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or(AnswerError::NoAddress)?;
            lines.push((port, None));
        } else if let Some(rest) = line.strip_prefix("c=") {
            let ip = rest
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse::<IpAddr>().ok());
            match lines.last_mut() {
                Some(m) => m.1 = ip,
                None => session_c = ip,
            }
        }
    }
    if lines.len() != offered {
        return Err(AnswerError::StreamCount {
            got: lines.len(),
            want: offered,
        });
    }
    lines
        .into_iter()
        .map(|(port, ip)| match (port, ip.or(session_c)) {
            (0, _) => Ok(None),
            (p, Some(ip)) if !ip.is_unspecified() => Ok(Some(SocketAddr::new(ip, p))),
            _ => Err(AnswerError::NoAddress),
        })
        .collect()
}

/// A participant as the metadata names it: its AOR and display name, from a From or To
/// header value with the number in the user part passed through `identities`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub aor: String,
    pub name: Option<String>,
}

impl Participant {
    /// From a From / To value (tag or not). With a redacting policy the display name
    /// (which often repeats the number) is left out and the user part is redacted.
    pub fn from_header(value: &str, identities: Redaction) -> Participant {
        let Some(na) = parse_name_addr(value) else {
            return Participant {
                aor: "sip:anonymous@anonymous.invalid".into(),
                name: None,
            };
        };
        let name = na
            .display
            .map(|d| d.trim_matches('"').to_string())
            .filter(|d| !d.is_empty());
        let Some(uri) = parse_uri(na.uri) else {
            return Participant {
                aor: na.uri.to_string(),
                name,
            };
        };
        let user = uri.user.map(|u| match identities {
            Redaction::Off => u.to_string(),
            // '#' starts a fragment in a URI: escaped (RFC 3261 §25.1 user part).
            other => other.number(u).to_string().replace('#', "%23"),
        });
        let aor = match user {
            Some(u) => format!("{}:{u}@{}", uri.scheme.to_ascii_lowercase(), uri.host),
            None => format!("{}:{}", uri.scheme.to_ascii_lowercase(), uri.host),
        };
        Participant {
            aor,
            name: if identities == Redaction::Off {
                name
            } else {
                None
            },
        }
    }
}

/// A recorded stream in the metadata: its label and whose media it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaStream {
    pub label: u32,
    pub sender: LegSide,
}

/// A gap in the recording: an earlier recording session of the call (on another SRS)
/// failed at `from`; this one started at `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub previous: u64,
    pub from: SystemTime,
    pub until: SystemTime,
}

/// What the metadata document says. `ids` seed the document's element ids (16 random
/// bytes each, base64 as RFC 7865's examples use), stable across updates of one session.
#[derive(Debug, Clone)]
pub struct Metadata<'a> {
    pub ids: [u128; 2],
    /// RFC 7989 Session-ID of the recorded call (`local;remote=...` as signalled).
    pub session_id: &'a str,
    pub caller: &'a Participant,
    pub callee: &'a Participant,
    pub streams: &'a [MetaStream],
    pub start: SystemTime,
    /// Set in the last document, when the recording ends.
    pub stop: Option<SystemTime>,
    pub gap: Option<Gap>,
}

fn b64(v: u128) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v.to_be_bytes())
}

/// Element ids of one document, derived from two random seeds: group, session, the two
/// participants, then one per stream.
fn element_id(ids: [u128; 2], n: u128) -> String {
    b64(ids[0] ^ ids[1].rotate_left(n as u32 * 7) ^ n)
}

/// `s` with XML's special characters escaped.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `t` as RFC 3339 UTC with whole seconds, the `xs:dateTime` form the metadata uses.
pub fn rfc3339(t: SystemTime) -> String {
    sbc_core::time::Utc::of(t).rfc3339_secs().to_string()
}

fn participant_xml(s: &mut String, id: &str, p: &Participant) {
    let _ = write!(
        s,
        "  <participant participant_id=\"{id}\">\n    <nameID aor=\"{}\">\n",
        xml_escape(&p.aor)
    );
    if let Some(n) = &p.name {
        let _ = writeln!(s, "      <name>{}</name>", xml_escape(n));
    }
    s.push_str("    </nameID>\n  </participant>\n");
}

/// The RFC 7865 metadata document (`datamode` complete: every document says it all).
pub fn metadata_xml(m: &Metadata<'_>) -> String {
    let id = |n: u128| element_id(m.ids, n);
    let (group, session) = (id(0), id(1));
    let parties = [
        (id(2), m.caller, LegSide::Caller),
        (id(3), m.callee, LegSide::Callee),
    ];
    let start = rfc3339(m.start);
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<recording xmlns=\"{RECORDING_NS}\">\n  <datamode>complete</datamode>\n"
    );
    let _ = write!(
        s,
        "  <group group_id=\"{group}\">\n    <associate-time>{start}</associate-time>\n  </group>\n"
    );
    let _ = write!(
        s,
        "  <session session_id=\"{session}\">\n    <sipSessionID>{}</sipSessionID>\n    <group-ref>{group}</group-ref>\n    <start-time>{start}</start-time>\n",
        xml_escape(m.session_id)
    );
    if let Some(stop) = m.stop {
        let _ = writeln!(s, "    <stop-time>{}</stop-time>", rfc3339(stop));
    }
    s.push_str("  </session>\n");
    for (pid, p, _) in &parties {
        participant_xml(&mut s, pid, p);
        let _ = write!(
            s,
            "  <participantsessionassoc participant_id=\"{pid}\" session_id=\"{session}\">\n    <associate-time>{start}</associate-time>\n"
        );
        if let Some(stop) = m.stop {
            let _ = writeln!(
                s,
                "    <disassociate-time>{}</disassociate-time>",
                rfc3339(stop)
            );
        }
        s.push_str("  </participantsessionassoc>\n");
    }
    let stream_ids: Vec<(String, MetaStream)> = m
        .streams
        .iter()
        .enumerate()
        .map(|(i, st)| (id(4 + i as u128), *st))
        .collect();
    for (sid, st) in &stream_ids {
        let _ = write!(
            s,
            "  <stream stream_id=\"{sid}\" session_id=\"{session}\">\n    <label>{}</label>\n  </stream>\n",
            st.label
        );
    }
    for (pid, _, side) in &parties {
        let _ = writeln!(s, "  <participantstreamassoc participant_id=\"{pid}\">");
        for (sid, st) in &stream_ids {
            let dir = if st.sender == *side { "send" } else { "recv" };
            let _ = writeln!(s, "    <{dir}>{sid}</{dir}>");
        }
        s.push_str("  </participantstreamassoc>\n");
    }
    if let Some(g) = m.gap {
        let _ = write!(
            s,
            "  <gap xmlns=\"{EXTENSION_NS}\">\n    <previous-recording>{:016x}</previous-recording>\n    <from>{}</from>\n    <until>{}</until>\n  </gap>\n",
            g.previous,
            rfc3339(g.from),
            rfc3339(g.until)
        );
    }
    s.push_str("</recording>\n");
    s
}

/// A `multipart/mixed` body of the SDP and the metadata (RFC 7866 §8.1: the metadata
/// part with `Content-Disposition: recording-session`). Returns the Content-Type value
/// and the body. `boundary` must not occur in either part (a fresh random token).
pub fn multipart(boundary: &str, sdp: &str, xml: &str) -> (String, Vec<u8>) {
    let body = format!(
        "--{boundary}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{boundary}\r\nContent-Type: {METADATA_TYPE}\r\nContent-Disposition: recording-session\r\n\r\n{xml}\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/mixed;boundary={boundary}"),
        body.into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn pcmu() -> Vec<RtpFormat> {
        vec![RtpFormat {
            payload_type: 0,
            encoding: "PCMU".into(),
            clock_rate: 8000,
            channels: None,
            fmtp: None,
        }]
    }

    #[test]
    fn offer_has_one_labelled_sendonly_line_per_stream() {
        let f = pcmu();
        let streams = [
            OfferStream {
                label: 1,
                local: "127.0.0.1:30000".parse().expect("addr"),
                crypto: Some((TapSuite::AesCm128HmacSha1_80, "inline:KEY1")),
                formats: &f,
                active: true,
            },
            OfferStream {
                label: 2,
                local: "127.0.0.1:30002".parse().expect("addr"),
                crypto: None,
                formats: &f,
                active: false,
            },
        ];
        let sdp = sdp_offer(7, 2, &streams);
        assert!(sdp.contains("o=sbc-edge 7 2 IN IP4 127.0.0.1\r\n"));
        assert!(sdp.contains("m=audio 30000 RTP/SAVP 0\r\nc=IN IP4 127.0.0.1\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY1\r\na=label:1\r\na=sendonly\r\n"));
        assert!(sdp.contains("m=audio 30002 RTP/AVP 0\r\n"));
        assert!(sdp.ends_with("a=label:2\r\na=inactive\r\n"));
    }

    #[test]
    fn answers_give_one_destination_per_line() {
        let a = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\na=recvonly\r\nm=audio 0 RTP/SAVP 0\r\nm=audio 4002 RTP/SAVP 0\r\nc=IN IP4 10.0.0.2\r\n";
        assert_eq!(
            parse_answer(a, 3),
            Ok(vec![
                Some("10.0.0.1:4000".parse().expect("addr")),
                None,
                Some("10.0.0.2:4002".parse().expect("addr"))
            ])
        );
        assert_eq!(
            parse_answer(a, 2),
            Err(AnswerError::StreamCount { got: 3, want: 2 })
        );
        assert_eq!(
            parse_answer("v=0\r\nm=audio 4000 RTP/AVP 0\r\n", 1),
            Err(AnswerError::NoAddress)
        );
    }

    #[test]
    fn participants_follow_the_identity_policy() {
        let from = "\"Alice\" <sip:+15551234534@pbx.example;user=phone>;tag=abc";
        let clear = Participant::from_header(from, Redaction::Off);
        assert_eq!(clear.aor, "sip:+15551234534@pbx.example");
        assert_eq!(clear.name.as_deref(), Some("Alice"));
        let masked = Participant::from_header(from, Redaction::Mask);
        assert_eq!(masked.aor, "sip:+155******34@pbx.example");
        assert_eq!(masked.name, None);
        let hashed = Participant::from_header(from, Redaction::Hash);
        assert!(hashed.aor.starts_with("sip:%23") && !hashed.aor.contains("5551234"));
    }

    #[test]
    fn metadata_and_multipart_round_trip() {
        let caller = Participant::from_header("\"A<&>\" <sip:alice@a.example>", Redaction::Off);
        let callee = Participant::from_header("<sip:bob@b.example>", Redaction::Off);
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
        let xml = metadata_xml(&Metadata {
            ids: [1, 2],
            session_id: "ab30317f1a784dc48ff824d0d3715d86;remote=00000000000000000000000000000000",
            caller: &caller,
            callee: &callee,
            streams: &streams,
            start,
            stop: Some(start + Duration::from_secs(61)),
            gap: None,
        });
        assert!(xml.contains("<name>A&lt;&amp;&gt;</name>"));
        assert!(xml.contains("<start-time>2026-12-04T12:01:21Z</start-time>"));
        assert!(xml.contains("<stop-time>2026-12-04T12:02:22Z</stop-time>"));
        assert_eq!(xml.matches("<send>").count(), 2);
        assert_eq!(xml.matches("<recv>").count(), 2);
        let (ctype, body) = multipart("b0undary", "v=0\r\n", &xml);
        let body = String::from_utf8(body).expect("utf8");
        // Read back by the parser every relayed body goes through.
        let mut msg = crate::message::SipMessage::new_request(
            crate::message::Method::Invite,
            "sip:srs@example.net",
        );
        msg.push_header("Content-Type", ctype.as_str());
        msg.set_body(body.clone().into_bytes());
        let policy = crate::b2bua::topology::BodyPolicy::new(&sbc_core::config::BodySettings {
            allow: vec![METADATA_TYPE.to_string()],
        });
        let crate::b2bua::topology::Body::Multipart(m) =
            crate::b2bua::topology::classify_body(&msg, &policy).expect("multipart")
        else {
            panic!("not multipart");
        };
        let parts = m.parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].content_type, parts[0].body),
            ("application/sdp", &b"v=0\r\n"[..])
        );
        assert_eq!(parts[1].content_type, METADATA_TYPE);
        assert_eq!(parts[1].content_disposition, Some("recording-session"));
        assert_eq!(parts[1].body, xml.as_bytes());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
