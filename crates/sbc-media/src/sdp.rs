//! SDP (RFC 4566) as the media anchor needs it: parse what calling platforms send, and
//! write it back with our addresses, ports, transport and `a=crypto` keys (RFC 4568).
//!
//! Owns: the parsed model, the `a=crypto` grammar, and serialization. Sans-IO: no
//! sockets, no clock, no randomness (keys are handed in). Must not: panic on any input,
//! touch codecs (`rtpmap`/`fmtp`/`ptime`/`telephone-event` lines pass through as they
//! came), or print key material (`MasterKey`'s `Debug` is redacted).
//!
//! What is rewritten: `o=` (our own origin, so nothing of the peer's leaks), `c=` at
//! session and media level, the `m=` port and protocol, `a=crypto`, `a=rtcp`,
//! `a=rtcp-mux`. ICE and DTLS attributes are dropped: they describe the peer's
//! transport, which the other leg never sees.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sbc_core::recording::RtpFormat;

use crate::srtp::{MasterKey, Mki, SrtpProfile, MAX_MKI_LEN};

/// Largest SDP body we parse. A two-stream offer with a dozen codecs and six crypto
/// lines is under 2 KiB; 32 KiB leaves room for verbose platforms and bounds the work.
pub const MAX_SDP_LEN: usize = 32 * 1024;

/// Most lines in one SDP (bounded work and memory per message).
pub const MAX_SDP_LINES: usize = 1024;

/// Hard ceiling on m-lines the parser accepts; the engine's configurable `max_streams`
/// (default 8) is checked against what parsed.
pub const MAX_MEDIA_LINES: usize = 64;

/// Most `a=crypto` lines per m-line: six suites exist, platforms offer at most one per
/// suite and key; 16 bounds per-offer key material.
pub const MAX_CRYPTO_PER_MEDIA: usize = 16;

/// Why an SDP body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is larger than [`MAX_SDP_LEN`] or has more than [`MAX_SDP_LINES`] lines.
    #[error("SDP too large")]
    TooLarge,
    /// The body is not UTF-8.
    #[error("SDP is not UTF-8")]
    NotUtf8,
    /// A line does not follow the grammar.
    #[error("line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A mandatory line is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// More m-lines than the limit.
    #[error("more than {max} m-lines")]
    TooManyMedia {
        /// The limit.
        max: usize,
    },
}

/// An RTP transport profile from the `m=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpProto {
    /// `RTP/AVP`
    Avp,
    /// `RTP/AVPF`
    Avpf,
    /// `RTP/SAVP`
    Savp,
    /// `RTP/SAVPF`
    Savpf,
}

impl RtpProto {
    /// Recognizes the RTP profiles we relay; `None` for anything else (DTLS-SRTP, UDPTL...).
    pub fn parse(s: &str) -> Option<RtpProto> {
        match s.to_ascii_uppercase().as_str() {
            "RTP/AVP" => Some(RtpProto::Avp),
            "RTP/AVPF" => Some(RtpProto::Avpf),
            "RTP/SAVP" => Some(RtpProto::Savp),
            "RTP/SAVPF" => Some(RtpProto::Savpf),
            _ => None,
        }
    }

    /// True for the SRTP profiles.
    pub fn is_secure(self) -> bool {
        matches!(self, RtpProto::Savp | RtpProto::Savpf)
    }

    /// True for the feedback (AVPF) profiles.
    pub fn has_feedback(self) -> bool {
        matches!(self, RtpProto::Avpf | RtpProto::Savpf)
    }

    /// The profile with the given security and the same feedback flavour.
    pub fn with_secure(self, secure: bool) -> RtpProto {
        match (secure, self.has_feedback()) {
            (false, false) => RtpProto::Avp,
            (false, true) => RtpProto::Avpf,
            (true, false) => RtpProto::Savp,
            (true, true) => RtpProto::Savpf,
        }
    }

    /// The `m=` line token.
    pub fn as_str(self) -> &'static str {
        match self {
            RtpProto::Avp => "RTP/AVP",
            RtpProto::Avpf => "RTP/AVPF",
            RtpProto::Savp => "RTP/SAVP",
            RtpProto::Savpf => "RTP/SAVPF",
        }
    }
}

/// A stream direction attribute (RFC 4566 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// A `c=` line. `address` is `None` when the address is not a literal IP (an FQDN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub address: Option<IpAddr>,
}

/// An `a=rtcp:` attribute (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpAttr {
    pub port: u16,
    pub address: Option<IpAddr>,
}

/// One `a=crypto` line (RFC 4568 §9.1). Key material only for suites we implement.
#[derive(Debug, Clone)]
pub struct Crypto {
    pub tag: u32,
    /// The suite name as written.
    pub suite: String,
    /// The suite, when we implement it.
    pub profile: Option<SrtpProfile>,
    /// `key || salt` split for `profile`; `None` when `profile` is `None`.
    pub key: Option<MasterKey>,
    /// `|lifetime` (packets), when given.
    pub lifetime: Option<u64>,
    /// `|MKI:length`, when given, as the bytes packets carry.
    pub mki: Option<Mki>,
    /// False when session parameters we do not implement are present (KDR other than
    /// 0, UNENCRYPTED_SRTP, ...) or several keys are given: such a line is never chosen.
    pub usable: bool,
}

/// One media description.
#[derive(Debug, Clone)]
pub struct Media {
    /// `audio`, `video`, ...
    pub kind: String,
    pub port: u16,
    /// The `/<n>` after the port, when present.
    pub port_count: Option<u16>,
    /// The protocol token as written.
    pub proto_raw: String,
    /// The protocol, when it is one we relay.
    pub proto: Option<RtpProto>,
    pub formats: Vec<String>,
    pub connection: Option<Connection>,
    pub rtcp: Option<RtcpAttr>,
    pub rtcp_mux: bool,
    pub crypto: Vec<Crypto>,
    pub direction: Option<Direction>,
    lines: Vec<Line>,
}

impl Media {
    /// True for an audio or video stream over an RTP profile we relay, with a port.
    pub fn is_relayable(&self) -> bool {
        self.port != 0 && self.proto.is_some() && matches!(self.kind.as_str(), "audio" | "video")
    }

    /// The first format's encoding name and clock rate: from its `a=rtpmap` (RFC 4566
    /// §6), else the static payload types of RFC 3551 §6 a recorder meets (0 PCMU, 8 PCMA,
    /// 9 G722; G722's RTP clock is 8000 although it samples at 16 kHz).
    pub fn first_codec(&self) -> Option<(String, u32)> {
        let pt = self.formats.first()?;
        let mapped = self.lines.iter().find_map(|l| match l {
            Line::Raw(text) => {
                let (p, rest) = text.strip_prefix("a=rtpmap:")?.split_once(' ')?;
                if p.trim() != pt {
                    return None;
                }
                let mut parts = rest.trim().split('/');
                let name = parts.next().filter(|n| !n.is_empty())?;
                let rate = parts.next()?.parse::<u32>().ok()?;
                Some((name.to_string(), rate))
            }
            _ => None,
        });
        mapped.or_else(|| {
            let name = match pt.as_str() {
                "0" => "PCMU",
                "8" => "PCMA",
                "9" => "G722",
                _ => return None,
            };
            Some((name.to_string(), 8000))
        })
    }
}

impl Media {
    /// Every payload format of the m-line the way a recorder needs it: `a=rtpmap` (name,
    /// clock rate, channels) and `a=fmtp` per payload type, in m-line order; the static
    /// audio types of RFC 3551 §6 without an rtpmap are named from the RFC's table. A
    /// dynamic type without an rtpmap, or a malformed one, is left out (it cannot be
    /// described to a recorder).
    pub fn rtp_formats(&self) -> Vec<RtpFormat> {
        let attr = |prefix: &str, pt: &str| {
            self.lines.iter().find_map(|l| match l {
                Line::Raw(text) => {
                    let (p, rest) = text.strip_prefix(prefix)?.split_once(' ')?;
                    (p.trim() == pt).then(|| rest.trim().to_string())
                }
                _ => None,
            })
        };
        let mut out = Vec::with_capacity(self.formats.len());
        for pt in &self.formats {
            let Ok(payload_type) = pt.parse::<u8>() else {
                continue;
            };
            let mapped = attr("a=rtpmap:", pt).and_then(|map| {
                let mut parts = map.split('/');
                let encoding = parts.next().filter(|n| !n.is_empty())?.to_string();
                let clock_rate = parts.next()?.parse::<u32>().ok()?;
                let channels = match parts.next() {
                    Some(c) => Some(c.parse::<u8>().ok()?),
                    None => None,
                };
                Some((encoding, clock_rate, channels))
            });
            let Some((encoding, clock_rate, channels)) = mapped.or_else(|| {
                let name = match payload_type {
                    0 => "PCMU",
                    3 => "GSM",
                    4 => "G723",
                    8 => "PCMA",
                    9 => "G722",
                    18 => "G729",
                    _ => return None,
                };
                Some((name.to_string(), 8000, None))
            }) else {
                continue;
            };
            out.push(RtpFormat {
                payload_type,
                encoding,
                clock_rate,
                channels,
                fmtp: attr("a=fmtp:", pt),
            });
        }
        out
    }
}

/// A line kept for output: either passed through or a slot we fill when writing.
#[derive(Debug, Clone)]
enum Line {
    Raw(String),
    Origin,
    Connection,
}

/// The `o=` line's fields we keep (the rest is replaced by ours on output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub session_id: String,
    pub version: String,
}

/// A parsed session description.
#[derive(Debug, Clone)]
pub struct SessionDescription {
    pub origin: Origin,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    pub media: Vec<Media>,
    session_lines: Vec<Line>,
}

/// Attributes that describe the peer's own transport (ICE, DTLS); dropped on rewrite.
const DROPPED_ATTRIBUTES: [&str; 11] = [
    "candidate",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "remote-candidates",
    "end-of-candidates",
    "fingerprint",
    "setup",
    "rtcp-mux-only",
];

fn bad(line: usize, reason: &'static str) -> SdpError {
    SdpError::BadLine { line, reason }
}

/// Base64 for `inline:` keys: standard alphabet, padding optional on input (some
/// platforms strip it), written with padding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses an SDP body.
pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
    if body.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    let mut origin = None;
    let mut connection = None;
    let mut media: Vec<Media> = Vec::new();
    let mut session_lines = Vec::new();
    let mut seen_v = false;
    let mut count = 0usize;

    for (idx, raw) in text.split('\n').enumerate() {
        let n = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_SDP_LINES {
            return Err(SdpError::TooLarge);
        }
        let bytes = line.as_bytes();
        if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
            return Err(bad(n, "not <type>=<value>"));
        }
        let kind = bytes[0];
        // `line` is ASCII at index 0 and 1, so slicing at 2 is on a char boundary.
        let value = &line[2..];
        if !seen_v {
            if kind != b'v' || value.trim() != "0" {
                return Err(bad(n, "first line must be v=0"));
            }
            seen_v = true;
            session_lines.push(Line::Raw(line.to_string()));
            continue;
        }
        match kind {
            b'v' => return Err(bad(n, "repeated v=")),
            b'm' => {
                if media.len() >= MAX_MEDIA_LINES {
                    return Err(SdpError::TooManyMedia {
                        max: MAX_MEDIA_LINES,
                    });
                }
                media.push(parse_m(n, value)?);
            }
            _ => match media.last_mut() {
                None => match kind {
                    b'o' => {
                        if origin.is_some() {
                            return Err(bad(n, "repeated o="));
                        }
                        origin = Some(parse_o(n, value)?);
                        session_lines.push(Line::Origin);
                    }
                    b'c' => {
                        if connection.is_some() {
                            return Err(bad(n, "repeated session c="));
                        }
                        connection = Some(parse_c(n, value)?);
                        session_lines.push(Line::Connection);
                    }
                    b'a' if is_dropped_attribute(value) => {}
                    _ => session_lines.push(Line::Raw(line.to_string())),
                },
                Some(m) => match kind {
                    b'c' => {
                        if m.connection.is_some() {
                            // Several c= lines are multicast-only (RFC 4566 §5.7).
                            return Err(bad(n, "repeated media c="));
                        }
                        m.connection = Some(parse_c(n, value)?);
                        m.lines.push(Line::Connection);
                    }
                    b'a' => parse_media_attribute(n, m, line, value)?,
                    _ => m.lines.push(Line::Raw(line.to_string())),
                },
            },
        }
    }
    if !seen_v {
        return Err(SdpError::Missing("v="));
    }
    let origin = origin.ok_or(SdpError::Missing("o="))?;
    for m in &media {
        if m.is_relayable() && m.connection.is_none() && connection.is_none() {
            return Err(SdpError::Missing("c= for an active m-line"));
        }
    }
    Ok(SessionDescription {
        origin,
        connection,
        media,
        session_lines,
    })
}

fn is_dropped_attribute(value: &str) -> bool {
    let name = value.split(':').next().unwrap_or(value);
    DROPPED_ATTRIBUTES
        .iter()
        .any(|d| d.eq_ignore_ascii_case(name.trim()))
}

fn parse_o(n: usize, value: &str) -> Result<Origin, SdpError> {
    let t: Vec<&str> = value.split_ascii_whitespace().collect();
    if t.len() != 6 {
        return Err(bad(n, "o= needs 6 fields"));
    }
    Ok(Origin {
        session_id: t[1].to_string(),
        version: t[2].to_string(),
    })
}

fn parse_c(n: usize, value: &str) -> Result<Connection, SdpError> {
    let mut t = value.split_ascii_whitespace();
    let (Some(net), Some(addrtype), Some(addr), None) = (t.next(), t.next(), t.next(), t.next())
    else {
        return Err(bad(n, "c= needs 3 fields"));
    };
    if !net.eq_ignore_ascii_case("IN") {
        return Err(bad(n, "c= network type is not IN"));
    }
    let want_v6 = match addrtype.to_ascii_uppercase().as_str() {
        "IP4" => false,
        "IP6" => true,
        _ => return Err(bad(n, "c= address type is not IP4 or IP6")),
    };
    // Drop a multicast TTL / count suffix.
    let literal = addr.split('/').next().unwrap_or(addr);
    let address = match literal.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() != want_v6 => {
            return Err(bad(n, "c= address does not match its type"))
        }
        Ok(ip) => Some(ip),
        Err(_) => None,
    };
    Ok(Connection { address })
}

fn parse_m(n: usize, value: &str) -> Result<Media, SdpError> {
    let mut t = value.split_ascii_whitespace();
    let (Some(kind), Some(port), Some(proto)) = (t.next(), t.next(), t.next()) else {
        return Err(bad(n, "m= needs media, port, proto and formats"));
    };
    let formats: Vec<String> = t.map(str::to_string).collect();
    if formats.is_empty() {
        return Err(bad(n, "m= has no formats"));
    }
    if formats.len() > 128 {
        return Err(bad(n, "m= has too many formats"));
    }
    let (port, port_count) = match port.split_once('/') {
        Some((p, c)) => (
            p,
            Some(c.parse::<u16>().map_err(|_| bad(n, "m= port count"))?),
        ),
        None => (port, None),
    };
    let port = port.parse::<u16>().map_err(|_| bad(n, "m= port"))?;
    Ok(Media {
        kind: kind.to_string(),
        port,
        port_count,
        proto_raw: proto.to_string(),
        proto: RtpProto::parse(proto),
        formats,
        connection: None,
        rtcp: None,
        rtcp_mux: false,
        crypto: Vec::new(),
        direction: None,
        lines: Vec::new(),
    })
}

fn parse_media_attribute(n: usize, m: &mut Media, line: &str, value: &str) -> Result<(), SdpError> {
    let (name, arg) = match value.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (value, None),
    };
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "crypto" => {
            if m.crypto.len() >= MAX_CRYPTO_PER_MEDIA {
                return Err(bad(n, "too many a=crypto lines"));
            }
            let c = parse_crypto(n, arg.unwrap_or(""))?;
            m.crypto.push(c);
        }
        "rtcp" => {
            if m.rtcp.is_some() {
                return Err(bad(n, "repeated a=rtcp"));
            }
            m.rtcp = Some(parse_rtcp(n, arg.unwrap_or(""))?);
        }
        "rtcp-mux" => m.rtcp_mux = true,
        "sendrecv" | "sendonly" | "recvonly" | "inactive" => {
            m.direction = Some(match lower.as_str() {
                "sendrecv" => Direction::SendRecv,
                "sendonly" => Direction::SendOnly,
                "recvonly" => Direction::RecvOnly,
                _ => Direction::Inactive,
            });
            m.lines.push(Line::Raw(line.to_string()));
        }
        _ if is_dropped_attribute(value) => {}
        _ => m.lines.push(Line::Raw(line.to_string())),
    }
    Ok(())
}

fn parse_rtcp(n: usize, arg: &str) -> Result<RtcpAttr, SdpError> {
    let mut t = arg.split_ascii_whitespace();
    let port = t
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or(bad(n, "a=rtcp port"))?;
    let address = match (t.next(), t.next(), t.next()) {
        (None, ..) => None,
        (Some(_net), Some(_at), Some(addr)) => addr.parse::<IpAddr>().ok(),
        _ => return Err(bad(n, "a=rtcp address")),
    };
    Ok(RtcpAttr { port, address })
}

/// Parses the value of `a=crypto:` (after the colon).
fn parse_crypto(n: usize, arg: &str) -> Result<Crypto, SdpError> {
    let mut t = arg.split_ascii_whitespace();
    let (Some(tag), Some(suite), Some(key_params)) = (t.next(), t.next(), t.next()) else {
        return Err(bad(n, "a=crypto needs tag, suite and key params"));
    };
    let session_params: Vec<&str> = t.collect();
    // RFC 4568 §9.1: tag is 1*9DIGIT.
    if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(n, "a=crypto tag"));
    }
    let tag = tag.parse::<u32>().map_err(|_| bad(n, "a=crypto tag"))?;
    let profile = suite.parse::<SrtpProfile>().ok();
    // Several keys (`;`-separated) are for key rotation by MKI; we accept one key only.
    let mut usable = !key_params.contains(';');
    // Window size hints are advisory; other session parameters change the transform.
    usable &= session_params
        .iter()
        .all(|p| p.starts_with("WSH=") || *p == "KDR=0");
    let first = key_params.split(';').next().unwrap_or(key_params);
    let Some(inline) = first.strip_prefix("inline:") else {
        return Err(bad(n, "a=crypto key method is not inline"));
    };
    let mut parts = inline.split('|');
    let key_b64 = parts.next().unwrap_or("");
    let mut lifetime = None;
    let mut mki = None;
    for p in parts {
        if let Some((value, len)) = p.split_once(':') {
            if mki.is_some() {
                return Err(bad(n, "a=crypto repeated MKI"));
            }
            mki = Some(parse_mki(n, value, len)?);
        } else {
            if lifetime.is_some() {
                return Err(bad(n, "a=crypto repeated lifetime"));
            }
            lifetime = Some(parse_lifetime(n, p)?);
        }
    }
    let key = match profile {
        None => None,
        Some(profile) => {
            let material = zeroize::Zeroizing::new(
                B64.decode(key_b64)
                    .map_err(|_| bad(n, "a=crypto key is not base64"))?,
            );
            Some(
                MasterKey::from_concatenated(profile, &material)
                    .map_err(|_| bad(n, "a=crypto key length does not match its suite"))?,
            )
        }
    };
    Ok(Crypto {
        tag,
        suite: suite.to_string(),
        profile,
        key,
        lifetime,
        mki,
        usable,
    })
}

fn parse_lifetime(n: usize, p: &str) -> Result<u64, SdpError> {
    let v = if let Some(exp) = p.strip_prefix("2^") {
        let e = exp
            .parse::<u32>()
            .map_err(|_| bad(n, "a=crypto lifetime"))?;
        // SRTP indices are 48 bits; SRTCP 31 bits (RFC 3711 §9.2).
        if e > 48 {
            return Err(bad(n, "a=crypto lifetime"));
        }
        1u64 << e
    } else {
        p.parse::<u64>().map_err(|_| bad(n, "a=crypto lifetime"))?
    };
    if v == 0 {
        return Err(bad(n, "a=crypto lifetime"));
    }
    Ok(v)
}

fn parse_mki(n: usize, value: &str, len: &str) -> Result<Mki, SdpError> {
    let len = len
        .parse::<usize>()
        .map_err(|_| bad(n, "a=crypto MKI length"))?;
    if len == 0 || len > MAX_MKI_LEN {
        return Err(bad(n, "a=crypto MKI length"));
    }
    let value = value
        .parse::<u64>()
        .map_err(|_| bad(n, "a=crypto MKI value"))?;
    let be = value.to_be_bytes();
    // The value must fit in `len` bytes (RFC 4568 §6.1); it is sent big-endian.
    if len < 8 && value >> (8 * len) != 0 {
        return Err(bad(n, "a=crypto MKI value does not fit its length"));
    }
    let mut bytes = [0u8; MAX_MKI_LEN];
    if len >= 8 {
        bytes[len - 8..len].copy_from_slice(&be);
    } else {
        bytes[..len].copy_from_slice(&be[8 - len..]);
    }
    Mki::new(&bytes[..len]).map_err(|_| bad(n, "a=crypto MKI length"))
}

/// One `a=crypto` line we write: our own key for the peer to decrypt with.
#[derive(Debug, Clone)]
pub struct CryptoOut {
    pub tag: u32,
    pub profile: SrtpProfile,
    pub key: MasterKey,
}

/// How to write one m-line.
#[derive(Debug, Clone)]
pub struct MediaRewrite {
    /// Our port; 0 disables (rejects) the stream.
    pub port: u16,
    /// The protocol to write; `None` keeps the one parsed (used for disabled lines).
    pub proto: Option<RtpProto>,
    pub crypto: Vec<CryptoOut>,
    /// Write `a=rtcp-mux`.
    pub rtcp_mux: bool,
}

/// How to write a whole description.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The address written in `c=` and `o=`.
    pub address: IpAddr,
    pub origin_session_id: u64,
    pub origin_version: u64,
    /// One per m-line, same order.
    pub media: Vec<MediaRewrite>,
}

fn ip_words(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "IP6"
    } else {
        "IP4"
    }
}

impl SessionDescription {
    /// Writes the description with our addresses, ports, transport and keys. `rw.media`
    /// must have one entry per m-line; missing entries disable their m-lines.
    pub fn rewrite(&self, rw: &Rewrite) -> Vec<u8> {
        let mut out = String::with_capacity(1024);
        let conn = format!("c=IN {} {}", ip_words(rw.address), rw.address);
        for l in &self.session_lines {
            match l {
                Line::Raw(s) => push_line(&mut out, s),
                Line::Origin => push_line(
                    &mut out,
                    &format!(
                        "o=- {} {} IN {} {}",
                        rw.origin_session_id,
                        rw.origin_version,
                        ip_words(rw.address),
                        rw.address
                    ),
                ),
                Line::Connection => push_line(&mut out, &conn),
            }
        }
        let disabled = MediaRewrite {
            port: 0,
            proto: None,
            crypto: Vec::new(),
            rtcp_mux: false,
        };
        for (i, m) in self.media.iter().enumerate() {
            let r = rw.media.get(i).unwrap_or(&disabled);
            let proto: &str = match r.proto {
                Some(p) => p.as_str(),
                None => &m.proto_raw,
            };
            let _ = write!(out, "m={} {}", m.kind, r.port);
            if let Some(c) = m.port_count {
                let _ = write!(out, "/{c}");
            }
            let _ = write!(out, " {proto}");
            for f in &m.formats {
                out.push(' ');
                out.push_str(f);
            }
            out.push_str("\r\n");
            for l in &m.lines {
                match l {
                    Line::Raw(s) => push_line(&mut out, s),
                    Line::Connection => push_line(&mut out, &conn),
                    Line::Origin => {}
                }
            }
            if r.port == 0 {
                continue;
            }
            if r.rtcp_mux {
                push_line(&mut out, "a=rtcp-mux");
            } else if m.rtcp.is_some() {
                let rtcp_port = r.port.saturating_add(1);
                let _ = write!(
                    out,
                    "a=rtcp:{rtcp_port} IN {} {}\r\n",
                    ip_words(rw.address),
                    rw.address
                );
            }
            for c in &r.crypto {
                let mut material = zeroize::Zeroizing::new(Vec::with_capacity(46));
                material.extend_from_slice(&c.key.key);
                material.extend_from_slice(&c.key.salt);
                let b64 = zeroize::Zeroizing::new(B64.encode(&*material));
                let _ = write!(out, "a=crypto:{} {} inline:{}\r\n", c.tag, c.profile, &*b64);
            }
        }
        out.into_bytes()
    }
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push_str("\r\n");
}

impl fmt::Display for RtpProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OFFER: &str = "v=0\r\n\
o=webex 123 456 IN IP4 198.51.100.7\r\n\
s=Call\r\n\
c=IN IP4 198.51.100.7\r\n\
t=0 0\r\n\
m=audio 40000 RTP/SAVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=rtcp:40001\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n\
a=crypto:2 AES_256_CM_HMAC_SHA1_80 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdA==\r\n\
a=crypto:3 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm\r\n\
a=candidate:1 1 UDP 2130706431 10.0.0.1 40000 typ host\r\n\
m=video 40002 RTP/SAVPF 96\r\n\
c=IN IP4 198.51.100.8\r\n\
a=rtpmap:96 H264/90000\r\n\
a=rtcp-mux\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

    #[test]
    fn first_codec_from_rtpmap_or_static_type() {
        let sd = parse(OFFER.as_bytes()).unwrap();
        assert_eq!(sd.media[0].first_codec(), Some(("PCMU".to_string(), 8000)));
        assert_eq!(sd.media[1].first_codec(), Some(("H264".to_string(), 90000)));
        let m = |formats: &str, attrs: &str| {
            let text = format!(
                "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP {formats}\r\n{attrs}"
            );
            parse(text.as_bytes()).unwrap().media[0].first_codec()
        };
        assert_eq!(m("8 0", ""), Some(("PCMA".to_string(), 8000)));
        assert_eq!(m("9", ""), Some(("G722".to_string(), 8000)));
        assert_eq!(
            m("111 0", "a=rtpmap:111 opus/48000/2\r\n"),
            Some(("opus".to_string(), 48000))
        );
        assert_eq!(m("96", ""), None);
        assert_eq!(m("96", "a=rtpmap:96 junk\r\n"), None);
    }

    #[test]
    fn rtp_formats_name_every_payload_type_with_fmtp() {
        let text = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 111 8 101 96 18\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\na=rtpmap:96 junk\r\n";
        let f = parse(text.as_bytes()).unwrap().media[0].rtp_formats();
        let fmt = |pt, name: &str, rate, ch, fmtp: Option<&str>| RtpFormat {
            payload_type: pt,
            encoding: name.to_string(),
            clock_rate: rate,
            channels: ch,
            fmtp: fmtp.map(str::to_string),
        };
        assert_eq!(
            f,
            vec![
                fmt(
                    111,
                    "opus",
                    48000,
                    Some(2),
                    Some("minptime=10;useinbandfec=1")
                ),
                fmt(8, "PCMA", 8000, None, None),
                fmt(101, "telephone-event", 8000, None, Some("0-16")),
                // 96 has a malformed rtpmap: left out.
                fmt(18, "G729", 8000, None, None),
            ]
        );
    }

    #[test]
    fn parses_platform_offer() {
        let sd = parse(OFFER.as_bytes()).unwrap();
        assert_eq!(sd.origin.session_id, "123");
        assert_eq!(
            sd.connection.unwrap().address,
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(sd.media.len(), 2);
        let a = &sd.media[0];
        assert_eq!((a.kind.as_str(), a.port), ("audio", 40000));
        assert_eq!(a.proto, Some(RtpProto::Savp));
        assert_eq!(a.formats, ["0", "8", "101"]);
        assert_eq!(a.rtcp.unwrap().port, 40001);
        assert!(!a.rtcp_mux);
        assert_eq!(a.direction, Some(Direction::SendRecv));
        assert_eq!(a.crypto.len(), 3);
        let c0 = &a.crypto[0];
        assert_eq!(c0.tag, 1);
        assert_eq!(c0.profile, Some(SrtpProfile::AesCm128HmacSha1_80));
        assert_eq!(c0.lifetime, Some(1 << 20));
        assert_eq!(c0.mki.unwrap().as_bytes(), &[0, 0, 0, 1]);
        assert_eq!(c0.key.as_ref().unwrap().key.len(), 16);
        assert!(c0.usable);
        assert_eq!(a.crypto[1].key.as_ref().unwrap().key.len(), 32);
        assert_eq!(a.crypto[2].profile, None);
        assert!(a.crypto[2].key.is_none());
        let v = &sd.media[1];
        assert_eq!(v.proto, Some(RtpProto::Savpf));
        assert!(v.rtcp_mux);
        assert_eq!(
            v.connection.unwrap().address,
            Some("198.51.100.8".parse().unwrap())
        );
    }

    fn rewrite_all(sd: &SessionDescription, secure: bool) -> Vec<u8> {
        let key = MasterKey::new(&[7u8; 16], &[9u8; 14]);
        let media = sd
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| MediaRewrite {
                port: if m.port == 0 { 0 } else { 20000 + 2 * i as u16 },
                proto: m.proto.map(|p| p.with_secure(secure)),
                crypto: if secure {
                    vec![CryptoOut {
                        tag: 1,
                        profile: SrtpProfile::AesCm128HmacSha1_80,
                        key: key.clone(),
                    }]
                } else {
                    vec![]
                },
                rtcp_mux: m.rtcp_mux,
            })
            .collect();
        sd.rewrite(&Rewrite {
            address: "203.0.113.1".parse().unwrap(),
            origin_session_id: 42,
            origin_version: 1,
            media,
        })
    }

    #[test]
    fn rewrite_replaces_addresses_ports_keys() {
        let sd = parse(OFFER.as_bytes()).unwrap();
        let out = String::from_utf8(rewrite_all(&sd, true)).unwrap();
        assert!(!out.contains("198.51.100"), "{out}");
        assert!(!out.contains("candidate"), "{out}");
        assert!(!out.contains("webex"), "{out}");
        assert!(out.contains("o=- 42 1 IN IP4 203.0.113.1\r\n"), "{out}");
        assert!(out.contains("c=IN IP4 203.0.113.1\r\n"), "{out}");
        assert!(out.contains("m=audio 20000 RTP/SAVP 0 8 101\r\n"), "{out}");
        assert!(out.contains("m=video 20002 RTP/SAVPF 96\r\n"), "{out}");
        assert!(out.contains("a=rtcp:20001 IN IP4 203.0.113.1\r\n"), "{out}");
        assert_eq!(out.matches("a=rtcp-mux").count(), 1);
        // Codecs untouched, in order.
        let codecs = "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
        assert!(out.contains(codecs), "{out}");
        // Old keys gone, exactly our key per m-line.
        assert!(!out.contains("WVNfX19"), "{out}");
        assert_eq!(out.matches("a=crypto:").count(), 2);
        let key_b64 = B64.encode([[7u8; 16].as_slice(), [9u8; 14].as_slice()].concat());
        assert!(out.contains(&format!(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64}\r\n"
        )));
    }

    #[test]
    fn rewrite_to_plain_and_round_trip() {
        let sd = parse(OFFER.as_bytes()).unwrap();
        let out = rewrite_all(&sd, false);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"));
        assert!(text.contains("m=video 20002 RTP/AVPF 96\r\n"));
        assert!(!text.contains("a=crypto"));
        // parse(rewrite(x)) rewrites to the same bytes.
        let again = parse(&out).unwrap();
        assert_eq!(again.media.len(), 2);
        assert_eq!(again.media[0].port, 20000);
        assert_eq!(again.media[0].rtcp.unwrap().port, 20001);
        assert_eq!(rewrite_all(&again, false), out);
        let secure = rewrite_all(&sd, true);
        assert_eq!(rewrite_all(&parse(&secure).unwrap(), true), secure);
    }

    #[test]
    fn disabled_media_keeps_port_zero_and_no_keys() {
        let sd = parse(OFFER.as_bytes()).unwrap();
        let out = sd.rewrite(&Rewrite {
            address: "203.0.113.1".parse().unwrap(),
            origin_session_id: 1,
            origin_version: 1,
            media: vec![],
        });
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("m=audio 0 RTP/SAVP 0 8 101\r\n"), "{text}");
        assert!(!text.contains("a=crypto"));
    }

    #[test]
    fn lf_only_ipv6_and_fqdn() {
        let sdp = "v=0\no=- 1 1 IN IP6 ::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\nm=audio 5004 RTP/AVP 0\nm=audio 5006 RTP/AVP 0\nc=IN IP4 media.example.com\n";
        let sd = parse(sdp.as_bytes()).unwrap();
        assert_eq!(
            sd.connection.unwrap().address,
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(sd.media[1].connection.unwrap().address, None);
    }

    #[test]
    fn malformed_inputs() {
        let cases: &[&str] = &[
            "",
            "o=- 1 1 IN IP4 1.2.3.4\r\n",
            "v=1\r\n",
            "v=0\r\nbogus\r\n",
            "v=0\r\ns=-\r\n",
            "v=0\r\no=- 1 1 IN IP4\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP 0\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 ::1\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/SAVP 0\r\na=crypto:x AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!!\r\n",
        ];
        for c in cases {
            assert!(parse(c.as_bytes()).is_err(), "accepted: {c:?}");
        }
        assert_eq!(parse(&[0xff, 0xfe]).err(), Some(SdpError::NotUtf8));
        assert_eq!(
            parse(&vec![b'a'; MAX_SDP_LEN + 1]).err(),
            Some(SdpError::TooLarge)
        );
    }

    #[test]
    fn crypto_session_params_and_mki() {
        let key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let c = parse_crypto(
            1,
            &format!("5 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31 UNENCRYPTED_SRTP"),
        )
        .unwrap();
        assert!(!c.usable);
        assert_eq!(c.lifetime, Some(1 << 31));
        let c = parse_crypto(1, &format!("5 AES_CM_128_HMAC_SHA1_80 inline:{key} WSH=64")).unwrap();
        assert!(c.usable);
        let c = parse_crypto(1, &format!("5 AES_CM_128_HMAC_SHA1_80 inline:{key}|1066:2")).unwrap();
        assert_eq!(c.mki.unwrap().as_bytes(), &[0x04, 0x2a]);
        assert!(parse_crypto(1, &format!("5 AES_CM_128_HMAC_SHA1_80 inline:{key}|300:1")).is_err());
        assert!(parse_crypto(1, &format!("5 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:0")).is_err());
        // Unpadded base64 of a 46-byte AES-256 key is accepted.
        let k256 = B64.encode([1u8; 46]);
        let unpadded = k256.trim_end_matches('=');
        let c = parse_crypto(1, &format!("1 AES_256_CM_HMAC_SHA1_80 inline:{unpadded}")).unwrap();
        assert_eq!(c.key.unwrap().key, vec![1u8; 32]);
        // GCM: 16 + 12 bytes.
        let g = B64.encode([2u8; 28]);
        let c = parse_crypto(1, &format!("1 AEAD_AES_128_GCM inline:{g}")).unwrap();
        assert_eq!(c.key.unwrap().salt.len(), 12);
    }

    #[test]
    fn too_many_media() {
        let mut s = String::from("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n");
        for _ in 0..=MAX_MEDIA_LINES {
            s.push_str("m=audio 5004 RTP/AVP 0\r\n");
        }
        assert_eq!(
            parse(s.as_bytes()).err(),
            Some(SdpError::TooManyMedia {
                max: MAX_MEDIA_LINES
            })
        );
    }

    #[test]
    fn debug_does_not_print_keys() {
        let sd = parse(OFFER.as_bytes()).unwrap();
        let dbg = format!("{sd:?}");
        assert!(!dbg.contains("WVNfX19"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_offer_never_panics_and_round_trips(
            cut in 0usize..OFFER.len(),
            junk in "[ -~\r\n]{0,40}",
        ) {
            let mut s = OFFER.as_bytes()[..cut].to_vec();
            s.extend_from_slice(junk.as_bytes());
            s.extend_from_slice(&OFFER.as_bytes()[cut..]);
            if let Ok(sd) = parse(&s) {
                let once = rewrite_all(&sd, true);
                let twice = rewrite_all(&parse(&once).expect("our output parses"), true);
                prop_assert_eq!(once, twice);
            }
        }
    }
}
