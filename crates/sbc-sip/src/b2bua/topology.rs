//! What crosses the B2BUA from one leg to the other: the header and body policy.
//!
//! This is the one file that decides which headers and bodies of a message received on
//! one leg appear in the message the B2BUA sends on the other, so it can be audited by
//! reading it. It is pure: no I/O, no clock, no randomness (a multipart boundary is passed
//! in), no logging. It owns the decision only: building each leg's own headers (Via,
//! Contact, ...), anchoring SDP and answering refusals belong to the B2BUA that calls it.
//! Configured per tenant in `[tenants.headers]` / `[tenants.bodies]`
//! (`sbc_core::config::HeaderSettings` / `BodySettings`).
//!
//! # Headers (RFC 3261 §16 / §6 "B2BUA"; topology hiding)
//!
//! An allow-list. A header line crosses only if its name (case-insensitive, compact forms
//! such as `k`, `s`, `x`, `u`, `o` expanded) is
//!
//! - in [`DEFAULT_CROSSING`], which is what a call needs end to end: `Accept`,
//!   `Accept-Encoding`, `Accept-Language`, `Allow`, `Allow-Events`, `Content-Disposition`,
//!   `Content-Language`, `Date`, `Event`, `Expires`, `MIME-Version`, `Min-SE`, `Priority`,
//!   `Privacy`, `Reason`, `Require`, `Retry-After`, `Session-Expires`, `Subject`,
//!   `Subscription-State`, `Supported`, `Timestamp`, `Unsupported`;
//!   and not in the tenant's `strip` list for that direction;
//! - or in the tenant's `pass` list for that direction.
//!
//! `Supported` and `Require` cross with their `100rel` option tag (reliable provisionals,
//! RFC 3262, are relayed per leg by `reliable.rs`, which owns `RSeq` and `RAck`). A
//! provisional the gateway acknowledges itself and relays unreliably loses the tag
//! ([`strip_100rel`]); a line left empty is dropped.
//!
//! Everything else is stripped, among others: `P-Preferred-Identity`, `Diversion`,
//! `History-Info`, `Warning` (carries host names), `User-Agent`, `Server`, `X-*`,
//! `Call-Info`, `Alert-Info`, `Error-Info`, `Organization`, `Reply-To`, `In-Reply-To`,
//! `Refer-To`, `Referred-By`, `Geolocation`, `Proxy-Require`, the authentication headers,
//! and every header this file does not know.
//!
//! Never crossing, whatever the config says ([`B2BUA_OWNED_HEADERS`], config refuses
//! them): `Via`, `Route`, `Record-Route`, `Contact`, `Call-ID`, `From`, `To`, `CSeq`,
//! `Max-Forwards`, `Content-Length`, `Content-Type`, `Content-Encoding`, `RSeq`, `RAck`,
//! `Path`, `Service-Route`: the B2BUA builds them per leg (the body headers come from
//! [`Body::rebuild`]).
//!
//! Then, on every message sent: `User-Agent` (requests) or `Server` (responses) with the
//! tenant's `user_agent` if one is configured (default: none, so neither header is sent),
//! and the direction's `add` headers (an added name replaces a crossing line of that name).
//!
//! ## P-Asserted-Identity and Privacy (RFC 3325, RFC 3323)
//!
//! The trust domain (RFC 3325 §2.3, §4) is configured per tenant and per side: the caller
//! side (the tenant's platform) is trusted with `trust_caller_identity`, the callee side
//! (its route target) with `trust_callee_identity`; both default to false. A message
//! received from side S and sent toward side T carries S's `P-Asserted-Identity` lines if
//! and only if
//!
//! 1. S is trusted (RFC 3325 §5: an identity asserted by a node outside the trust domain
//!    is removed, so an untrusted peer cannot spoof one), and
//! 2. T is trusted, or the message's `Privacy` header asks for no identity privacy
//!    (RFC 3325 §5 and §7: leaving the trust domain, PAI is removed when `Privacy`
//!    contains `id`; we also remove it for `header` and `user` (RFC 3323 §4.2), which ask
//!    for identity-revealing headers to be removed or anonymised, so the stricter reading
//!    wins).
//!
//! `Privacy` itself always crosses (RFC 3323 §4.2: it is the user's request, which later
//! hops must see); config can neither strip nor pass it. `P-Preferred-Identity`
//! (RFC 3325 §9.2) is consumed at the edge of the trust domain and is stripped by default.
//!
//! # Bodies (RFC 3261 §7.4, RFC 2046 §5.1, RFC 5621)
//!
//! [`classify_body`] decides before anything is forwarded. Types are matched
//! case-insensitively, parameters allowed.
//!
//! - empty body: nothing to do (whatever Content-Type says);
//! - `application/sdp`: the SDP to anchor;
//! - a type in the tenant's `[tenants.bodies] allow` list: crosses as it is;
//! - `multipart/mixed`: at most [`MAX_PARTS`] parts; at most one `application/sdp` part
//!   (anchored and replaced like a plain SDP); every other part's type must be allowed
//!   (a part without Content-Type is `text/plain`, RFC 2046 §5.1). The result is a fresh
//!   multipart with the caller's new boundary, each part keeping only its Content-Type,
//!   Content-ID and Content-Disposition headers;
//! - anything else is refused ([`BodyRefusal`]): no Content-Type, a Content-Encoding (or a
//!   part's Content-Transfer-Encoding other than 7bit/8bit/binary), an unknown type, a
//!   disallowed or nested-multipart part, a malformed multipart, more than [`MAX_PARTS`]
//!   parts, two SDP parts. The B2BUA answers a refused request 415 Unsupported Media Type
//!   with [`BodyPolicy::accept_header`] (RFC 3261 §21.4.16) before forwarding anything.

use sbc_core::config::{BodySettings, HeaderSettings, GOVERNED_HEADERS};
use sbc_core::media::LegSide;

pub use sbc_core::config::B2BUA_OWNED_HEADERS;

use crate::message::{long_header_name, split_values, SipMessage};

/// Headers that cross by default (lower case, long forms), sorted.
pub const DEFAULT_CROSSING: [&str; 23] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "allow",
    "allow-events",
    "content-disposition",
    "content-language",
    "date",
    "event",
    "expires",
    "mime-version",
    "min-se",
    "priority",
    "privacy",
    "reason",
    "require",
    "retry-after",
    "session-expires",
    "subject",
    "subscription-state",
    "supported",
    "timestamp",
    "unsupported",
];

/// The option tag of reliable provisionals (RFC 3262): it crosses, except on a provisional
/// the gateway acknowledged itself and relays unreliably ([`strip_100rel`]).
const RELIABLE_PROVISIONALS: &str = "100rel";

/// `Privacy` values (RFC 3323 §4.2, RFC 3325 §9.3) that remove P-Asserted-Identity when a
/// message leaves the trust domain.
const PRIVACY_HIDES_IDENTITY: [&str; 3] = ["id", "header", "user"];

fn is_owned(long: &str) -> bool {
    B2BUA_OWNED_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(long))
}

fn is_governed(long: &str) -> bool {
    GOVERNED_HEADERS
        .iter()
        .any(|(h, _)| h.eq_ignore_ascii_case(long))
}

/// RFC 3261 §25.1 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// A header value we may write: no control characters (CR/LF would inject lines).
fn safe_value(v: &str) -> bool {
    !v.trim().is_empty() && !v.chars().any(char::is_control)
}

/// One direction's compiled rules.
#[derive(Debug, Clone, Default)]
struct Direction {
    /// Lower-case long names that cross: defaults − strip + pass − added names.
    crossing: Vec<Box<str>>,
    /// Fixed headers written on every message: (name as configured, value).
    add: Vec<(Box<str>, Box<str>)>,
}

impl Direction {
    fn new(rules: &sbc_core::config::HeaderRules) -> Direction {
        let listed =
            |list: &[String], long: &str| list.iter().any(|h| h.eq_ignore_ascii_case(long));
        // Config validation refuses owned / governed names, compact forms and unsafe
        // values; settings built in code get the same guarantees by filtering here.
        let add: Vec<(Box<str>, Box<str>)> = rules
            .add
            .iter()
            .filter(|(n, v)| {
                n.len() > 1 && is_token(n) && !is_owned(n) && !is_governed(n) && safe_value(v)
            })
            .map(|(n, v)| (n.as_str().into(), v.trim().into()))
            .collect();
        let added = |long: &str| add.iter().any(|(n, _)| n.eq_ignore_ascii_case(long));
        let mut crossing: Vec<Box<str>> = DEFAULT_CROSSING
            .iter()
            .filter(|h| (**h == "privacy" || !listed(&rules.strip, h)) && !added(h))
            .map(|h| (*h).into())
            .collect();
        for p in &rules.pass {
            let long = p.to_ascii_lowercase();
            let ok = long.len() > 1 && is_token(&long) && !is_owned(&long) && !is_governed(&long);
            if ok && !added(&long) && !crossing.iter().any(|c| **c == *long) {
                crossing.push(long.into());
            }
        }
        Direction { crossing, add }
    }

    fn crosses(&self, long: &str) -> bool {
        self.crossing.iter().any(|c| c.eq_ignore_ascii_case(long))
    }
}

/// A tenant's header policy, compiled once from its settings (per config load).
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    to_callee: Direction,
    to_caller: Direction,
    trust_caller: bool,
    trust_callee: bool,
    user_agent: Option<Box<str>>,
}

impl Default for HeaderPolicy {
    /// The defaults: [`DEFAULT_CROSSING`] both ways, no side trusted, no User-Agent/Server.
    fn default() -> Self {
        HeaderPolicy::new(&HeaderSettings::default())
    }
}

impl HeaderPolicy {
    /// Compile a tenant's `[tenants.headers]`.
    pub fn new(s: &HeaderSettings) -> HeaderPolicy {
        HeaderPolicy {
            to_callee: Direction::new(&s.to_callee),
            to_caller: Direction::new(&s.to_caller),
            trust_caller: s.trust_caller_identity,
            trust_callee: s.trust_callee_identity,
            user_agent: s
                .user_agent
                .as_deref()
                .filter(|v| safe_value(v))
                .map(|v| v.trim().into()),
        }
    }

    fn direction(&self, toward: LegSide) -> &Direction {
        match toward {
            LegSide::Callee => &self.to_callee,
            LegSide::Caller => &self.to_caller,
        }
    }

    fn trusts(&self, side: LegSide) -> bool {
        match side {
            LegSide::Caller => self.trust_caller,
            LegSide::Callee => self.trust_callee,
        }
    }

    /// Whether a header line named `name` (as written, any case, compact forms allowed)
    /// crosses unconditionally toward `toward`. P-Asserted-Identity is conditional (see
    /// the module doc) and answers false here; User-Agent/Server and `add` headers are
    /// written by the policy, never copied, and also answer false.
    pub fn crosses(&self, name: &str, toward: LegSide) -> bool {
        let long = long_header_name(name);
        !is_owned(long) && self.direction(toward).crosses(long)
    }

    /// The names (lower case, long forms) that cross toward `toward`, for audit and docs.
    pub fn crossing(&self, toward: LegSide) -> impl Iterator<Item = &str> {
        self.direction(toward).crossing.iter().map(|h| &**h)
    }

    /// The value written as User-Agent / Server, if configured. For messages the B2BUA
    /// makes itself (a BYE on timeout, a 415), which do not go through [`Self::copy_across`].
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.as_deref()
    }

    /// Whether `from`'s P-Asserted-Identity may be sent toward `toward` (module doc).
    fn identity_crosses(&self, from: &SipMessage, toward: LegSide) -> bool {
        if !self.trusts(toward.other()) {
            return false;
        }
        if self.trusts(toward) {
            return true;
        }
        !from.header_values("privacy").any(|v| {
            v.split([';', ',']).map(str::trim).any(|p| {
                PRIVACY_HIDES_IDENTITY
                    .iter()
                    .any(|h| p.eq_ignore_ascii_case(h))
            })
        })
    }

    /// Push onto `to` the header lines of `from` that may cross toward `toward` (in their
    /// order, names as written), then User-Agent (if `to` is a request) or Server (a
    /// response) when configured, then the direction's fixed `add` headers. `from` is the
    /// message received from the other side (`toward.other()`). Owned headers (Via,
    /// Contact, Content-Type, ...) are never pushed: the caller builds them.
    pub fn copy_across(&self, from: &SipMessage, to: &mut SipMessage, toward: LegSide) {
        let dir = self.direction(toward);
        let mut identity: Option<bool> = None;
        for (name, value) in from.headers() {
            let long = long_header_name(name);
            if is_owned(long) {
                continue;
            }
            if long.eq_ignore_ascii_case("p-asserted-identity") {
                if *identity.get_or_insert_with(|| self.identity_crosses(from, toward)) {
                    to.push_header(name, value);
                }
                continue;
            }
            if !dir.crosses(long) {
                continue;
            }
            to.push_header(name, value);
        }
        if let Some(ua) = &self.user_agent {
            let name = if to.is_request() {
                "User-Agent"
            } else {
                "Server"
            };
            to.push_header(name, &**ua);
        }
        for (n, v) in &dir.add {
            to.push_header(&**n, &**v);
        }
    }
}

/// True if `msg` carries the `100rel` option tag in header `name` (Supported or Require).
pub fn has_100rel(msg: &SipMessage, name: &str) -> bool {
    msg.header_values(name)
        .any(|t| t.eq_ignore_ascii_case(RELIABLE_PROVISIONALS))
}

/// Remove the `100rel` tag from every Supported / Require line of `msg` (a line left empty
/// is dropped; the lines keep their order among themselves, after the other headers): a
/// provisional relayed unreliably must not claim to be reliable (RFC 3262 §3).
pub fn strip_100rel(msg: &mut SipMessage) {
    let lines: Vec<(String, String)> = msg
        .headers()
        .filter(|(n, _)| {
            let long = long_header_name(n);
            long.eq_ignore_ascii_case("supported") || long.eq_ignore_ascii_case("require")
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    if lines.is_empty() {
        return;
    }
    msg.remove_header("supported");
    msg.remove_header("require");
    for (name, value) in lines {
        push_without_100rel(msg, &name, &value);
    }
}

/// Push a Supported / Require line without the `100rel` tag; nothing if no tag is left.
fn push_without_100rel(to: &mut SipMessage, name: &str, value: &str) {
    let is_100rel = |t: &str| t.eq_ignore_ascii_case(RELIABLE_PROVISIONALS);
    if !split_values(value).any(is_100rel) {
        if split_values(value).next().is_some() {
            to.push_header(name, value);
        }
        return;
    }
    let kept: Vec<&str> = split_values(value).filter(|t| !is_100rel(t)).collect();
    if !kept.is_empty() {
        to.push_header(name, kept.join(", "));
    }
}

// ---- bodies ----

/// Most parts of a multipart/mixed body: SDP plus PIDF-LO plus ISUP is three; RFC 5621
/// bodies in practice carry at most a handful. More is refused, not truncated.
pub const MAX_PARTS: usize = 8;
/// Most header lines in one part: a part needs Content-Type, Content-ID,
/// Content-Disposition and perhaps Content-Transfer-Encoding / Content-Length.
pub const MAX_PART_HEADERS: usize = 16;
/// Longest multipart boundary (RFC 2046 §5.1.1).
pub const MAX_BOUNDARY_LEN: usize = 70;

/// Why a body was refused. A closed set: `as_str` is the metric label `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyRefusal {
    /// A non-empty body with no Content-Type.
    NoContentType,
    /// Content-Type is not `type/subtype[;params]`, or appears twice.
    BadContentType,
    /// The body (or a part) carries a Content-Encoding / Content-Transfer-Encoding.
    Encoded,
    /// The body's type is neither SDP, multipart/mixed nor allowed for the tenant.
    UnsupportedType,
    /// A multipart/mixed part whose type is not allowed (a nested multipart included).
    DisallowedPart,
    /// A multipart/mixed body that does not parse (no boundary, no closing delimiter, no
    /// parts, a part without its blank line, folded or non-UTF-8 part headers).
    MalformedMultipart,
    /// More than [`MAX_PARTS`] parts, or more than [`MAX_PART_HEADERS`] in one part.
    TooManyParts,
    /// Two SDP parts: which one to anchor would be a guess.
    TwoSdpParts,
}

impl BodyRefusal {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [BodyRefusal; 8] = [
        BodyRefusal::NoContentType,
        BodyRefusal::BadContentType,
        BodyRefusal::Encoded,
        BodyRefusal::UnsupportedType,
        BodyRefusal::DisallowedPart,
        BodyRefusal::MalformedMultipart,
        BodyRefusal::TooManyParts,
        BodyRefusal::TwoSdpParts,
    ];

    /// The status a refused request is answered with.
    pub const STATUS: u16 = 415;

    /// The metric label (`reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            BodyRefusal::NoContentType => "no_content_type",
            BodyRefusal::BadContentType => "bad_content_type",
            BodyRefusal::Encoded => "encoded",
            BodyRefusal::UnsupportedType => "unsupported_type",
            BodyRefusal::DisallowedPart => "disallowed_part",
            BodyRefusal::MalformedMultipart => "malformed_multipart",
            BodyRefusal::TooManyParts => "too_many_parts",
            BodyRefusal::TwoSdpParts => "two_sdp_parts",
        }
    }

    /// The reason phrase of the 415.
    pub fn reason_phrase(self) -> &'static str {
        match self {
            BodyRefusal::NoContentType => "Unsupported Media Type (No Content-Type)",
            BodyRefusal::BadContentType => "Unsupported Media Type (Malformed Content-Type)",
            BodyRefusal::Encoded => "Unsupported Media Type (Content-Encoding)",
            BodyRefusal::UnsupportedType => "Unsupported Media Type",
            BodyRefusal::DisallowedPart => "Unsupported Media Type (Multipart Part Not Allowed)",
            BodyRefusal::MalformedMultipart => "Unsupported Media Type (Malformed Multipart)",
            BodyRefusal::TooManyParts => "Unsupported Media Type (Too Many Parts)",
            BodyRefusal::TwoSdpParts => "Unsupported Media Type (Two SDP Parts)",
        }
    }

    /// The `Accept-Encoding` value the 415 carries besides Accept (RFC 3261 §21.4.16:
    /// a refused encoding is answered with the encodings we accept).
    pub fn accept_encoding(self) -> Option<&'static str> {
        matches!(self, BodyRefusal::Encoded).then_some("identity")
    }
}

/// A tenant's body policy, compiled once from its settings.
#[derive(Debug, Clone)]
pub struct BodyPolicy {
    /// Allowed `type/subtype`, lower case.
    allow: Vec<Box<str>>,
    accept: String,
}

impl Default for BodyPolicy {
    /// SDP and multipart/mixed (with an SDP part only).
    fn default() -> Self {
        BodyPolicy::new(&BodySettings::default())
    }
}

impl BodyPolicy {
    /// Compile a tenant's `[tenants.bodies]`.
    pub fn new(s: &BodySettings) -> BodyPolicy {
        let allow: Vec<Box<str>> = s
            .allow
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| {
                t.split_once('/')
                    .is_some_and(|(a, b)| is_token(a) && is_token(b))
                    && t != "application/sdp"
                    && !t.starts_with("multipart/")
            })
            .map(Into::into)
            .collect();
        let mut accept = String::from("application/sdp, multipart/mixed");
        for t in &allow {
            accept.push_str(", ");
            accept.push_str(t);
        }
        BodyPolicy { allow, accept }
    }

    /// Whether `type/subtype` (any case) may cross besides SDP.
    pub fn allows(&self, ty: &str, subtype: &str) -> bool {
        self.allow.iter().any(|a| {
            a.split_once('/')
                .is_some_and(|(t, s)| t.eq_ignore_ascii_case(ty) && s.eq_ignore_ascii_case(subtype))
        })
    }

    /// The `Accept` value of a 415: `application/sdp, multipart/mixed, <allowed types>`.
    pub fn accept_header(&self) -> &str {
        &self.accept
    }
}

/// A Content-Type value split: type and subtype (trimmed, as written) and the parameters.
#[derive(Debug, Clone, Copy)]
struct MediaType<'a> {
    ty: &'a str,
    subtype: &'a str,
    params: &'a str,
}

impl MediaType<'_> {
    fn parse(v: &str) -> Option<MediaType<'_>> {
        let (essence, params) = v.split_once(';').unwrap_or((v, ""));
        let (ty, subtype) = essence.split_once('/')?;
        let (ty, subtype) = (ty.trim(), subtype.trim());
        (is_token(ty) && is_token(subtype)).then_some(MediaType {
            ty,
            subtype,
            params,
        })
    }

    fn is(&self, ty: &str, subtype: &str) -> bool {
        self.ty.eq_ignore_ascii_case(ty) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    /// A parameter's value, unquoted (multipart boundaries hold no `;` or `"`).
    fn param(&self, name: &str) -> Option<&str> {
        self.params.split(';').find_map(|p| {
            let (n, v) = p.split_once('=')?;
            n.trim().eq_ignore_ascii_case(name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
    }
}

/// RFC 2046 §5.1.1 boundary: 1 to 70 bchars, not ending in a space.
fn valid_boundary(b: &str) -> bool {
    (1..=MAX_BOUNDARY_LEN).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
}

/// One part of a multipart/mixed body that crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'m> {
    /// Content-Type as written (`text/plain` when the part had none, RFC 2046 §5.1).
    pub content_type: &'m str,
    pub content_id: Option<&'m str>,
    pub content_disposition: Option<&'m str>,
    /// The part's content.
    pub body: &'m [u8],
    /// This is the SDP part.
    pub sdp: bool,
    /// Where `body` starts in the message's body ([`Classified`] keeps it).
    at: usize,
}

/// A multipart/mixed body that passed the policy: every part crosses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multipart<'m> {
    parts: Vec<Part<'m>>,
}

impl<'m> Multipart<'m> {
    /// The SDP part's content, if there is one.
    pub fn sdp(&self) -> Option<&'m [u8]> {
        self.parts.iter().find(|p| p.sdp).map(|p| p.body)
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Part<'m>] {
        &self.parts
    }
}

/// A body that may cross, borrowed from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'m> {
    /// No body.
    Empty,
    /// An SDP body, to anchor.
    Sdp(&'m [u8]),
    /// A body of an allowed non-SDP type (e.g. INFO with `application/dtmf-relay`),
    /// crossing as it is; `content_type` as written.
    Other {
        content_type: &'m str,
        body: &'m [u8],
    },
    /// A multipart/mixed body: its SDP part (if any) to anchor, allowed parts to keep.
    Multipart(Multipart<'m>),
}

/// The body and Content-Type to put on the outgoing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// The boundary given to [`Body::rebuild`] is not an RFC 2046 boundary, or occurs in a
/// part it would delimit (try again with another random one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("multipart boundary is invalid or occurs in a part")]
pub struct BadBoundary;

impl<'m> Body<'m> {
    /// The SDP to anchor, if any.
    pub fn sdp(&self) -> Option<&'m [u8]> {
        match self {
            Body::Sdp(s) => Some(s),
            Body::Multipart(m) => m.sdp(),
            Body::Empty | Body::Other { .. } => None,
        }
    }

    /// The outgoing body and its Content-Type (`None`: send no body). `new_sdp` replaces
    /// the SDP (plain or the SDP part; `None` keeps it as received, e.g. media anchoring
    /// off); it is ignored when there is no SDP. A multipart is rebuilt with `boundary`
    /// (the caller's fresh random token).
    pub fn rebuild(
        &self,
        new_sdp: Option<&[u8]>,
        boundary: &str,
    ) -> Result<Option<Rebuilt>, BadBoundary> {
        Ok(match self {
            Body::Empty => None,
            Body::Sdp(old) => Some(Rebuilt {
                content_type: "application/sdp".into(),
                body: new_sdp.unwrap_or(old).to_vec(),
            }),
            Body::Other { content_type, body } => Some(Rebuilt {
                content_type: (*content_type).into(),
                body: body.to_vec(),
            }),
            Body::Multipart(m) => Some(rebuild_multipart(m, new_sdp, boundary)?),
        })
    }
}

fn rebuild_multipart<'a>(
    m: &Multipart<'a>,
    new_sdp: Option<&'a [u8]>,
    boundary: &str,
) -> Result<Rebuilt, BadBoundary> {
    if !valid_boundary(boundary) {
        return Err(BadBoundary);
    }
    let content = |p: &Part<'a>| -> &'a [u8] {
        match (p.sdp, new_sdp) {
            (true, Some(s)) => s,
            _ => p.body,
        }
    };
    let mut delimiter = Vec::with_capacity(boundary.len() + 2);
    delimiter.extend_from_slice(b"--");
    delimiter.extend_from_slice(boundary.as_bytes());
    if m.parts
        .iter()
        .any(|p| memchr::memmem::find(content(p), &delimiter).is_some())
    {
        return Err(BadBoundary);
    }
    let mut body = Vec::with_capacity(
        m.parts
            .iter()
            .map(|p| content(p).len() + 128 + boundary.len())
            .sum(),
    );
    for p in &m.parts {
        body.extend_from_slice(&delimiter);
        body.extend_from_slice(b"\r\nContent-Type: ");
        body.extend_from_slice(p.content_type.as_bytes());
        for (name, value) in [
            ("Content-ID", p.content_id),
            ("Content-Disposition", p.content_disposition),
        ] {
            if let Some(v) = value {
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(name.as_bytes());
                body.extend_from_slice(b": ");
                body.extend_from_slice(v.as_bytes());
            }
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content(p));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(&delimiter);
    body.extend_from_slice(b"--\r\n");
    let content_type = if is_token(boundary) {
        format!("multipart/mixed;boundary={boundary}")
    } else {
        format!("multipart/mixed;boundary=\"{boundary}\"")
    };
    Ok(Rebuilt { content_type, body })
}

/// A message with its body classified once by [`classify_body`]: the message, owned, and
/// where each piece of its [`Body`] lies, so that [`Classified::body`] gives the same
/// [`Body`] again without parsing (a multipart request is parsed once, before admission,
/// and relayed from this, even after waiting for the cluster).
#[derive(Debug)]
pub struct Classified {
    msg: SipMessage,
    shape: Shape,
}

/// A [`Body`] as positions in its message's body (Content-Type values copied).
#[derive(Debug)]
enum Shape {
    Empty,
    Sdp,
    Other { content_type: String },
    Multipart(Vec<PartShape>),
}

#[derive(Debug)]
struct PartShape {
    content_type: String,
    content_id: Option<String>,
    content_disposition: Option<String>,
    body: std::ops::Range<usize>,
    sdp: bool,
}

impl Shape {
    fn of(body: &Body<'_>) -> Shape {
        match body {
            Body::Empty => Shape::Empty,
            Body::Sdp(_) => Shape::Sdp,
            Body::Other { content_type, .. } => Shape::Other {
                content_type: (*content_type).to_string(),
            },
            Body::Multipart(m) => Shape::Multipart(
                m.parts
                    .iter()
                    .map(|p| PartShape {
                        content_type: p.content_type.to_string(),
                        content_id: p.content_id.map(str::to_string),
                        content_disposition: p.content_disposition.map(str::to_string),
                        body: p.at..p.at + p.body.len(),
                        sdp: p.sdp,
                    })
                    .collect(),
            ),
        }
    }
}

/// The body policy refused a message's body: why, and the message (to answer it).
#[derive(Debug)]
pub struct Unclassified {
    pub refusal: BodyRefusal,
    pub msg: SipMessage,
}

impl Classified {
    /// Classify `msg`'s body under `policy` ([`classify_body`]).
    pub fn new(msg: SipMessage, policy: &BodyPolicy) -> Result<Classified, Box<Unclassified>> {
        match classify_body(&msg, policy) {
            Ok(body) => {
                let shape = Shape::of(&body);
                Ok(Classified { msg, shape })
            }
            Err(refusal) => Err(Box::new(Unclassified { refusal, msg })),
        }
    }

    /// The message.
    pub fn msg(&self) -> &SipMessage {
        &self.msg
    }

    /// The message, for keeping once its body is no longer needed.
    pub fn into_msg(self) -> SipMessage {
        self.msg
    }

    /// The body as [`classify_body`] found it, read from the positions kept.
    pub fn body(&self) -> Body<'_> {
        let whole = self.msg.body();
        match &self.shape {
            Shape::Empty => Body::Empty,
            Shape::Sdp => Body::Sdp(whole),
            Shape::Other { content_type } => Body::Other {
                content_type,
                body: whole,
            },
            Shape::Multipart(parts) => Body::Multipart(Multipart {
                parts: parts
                    .iter()
                    .map(|p| Part {
                        content_type: &p.content_type,
                        content_id: p.content_id.as_deref(),
                        content_disposition: p.content_disposition.as_deref(),
                        // The message is ours and unchanged since `new`: every range
                        // was cut from this body, so it lies in it.
                        body: &whole[p.body.clone()],
                        sdp: p.sdp,
                        at: p.body.start,
                    })
                    .collect(),
            }),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// How many times [`classify_body`] ran on this thread (tests check that a request's
    /// body is classified once, `b2bua/body_once_tests.rs`).
    pub(crate) static CLASSIFIED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Decide what `msg`'s body is under `policy`, before anything is forwarded. A refusal
/// is answered 415 with [`BodyPolicy::accept_header`] (and
/// [`BodyRefusal::accept_encoding`]).
pub fn classify_body<'m>(
    msg: &'m SipMessage,
    policy: &BodyPolicy,
) -> Result<Body<'m>, BodyRefusal> {
    #[cfg(test)]
    CLASSIFIED.with(|n| n.set(n.get() + 1));
    let body = msg.body();
    if body.is_empty() {
        return Ok(Body::Empty);
    }
    let mut types = msg.header_values("content-type");
    let ct = types.next().ok_or(BodyRefusal::NoContentType)?;
    if types.next().is_some() {
        return Err(BodyRefusal::BadContentType);
    }
    if msg
        .header_values("content-encoding")
        .any(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err(BodyRefusal::Encoded);
    }
    let ct = ct.trim();
    let mt = MediaType::parse(ct).ok_or(BodyRefusal::BadContentType)?;
    if mt.is("application", "sdp") {
        return Ok(Body::Sdp(body));
    }
    if mt.is("multipart", "mixed") {
        let boundary = mt
            .param("boundary")
            .filter(|b| valid_boundary(b))
            .ok_or(BodyRefusal::MalformedMultipart)?;
        return parse_multipart(body, boundary, policy).map(Body::Multipart);
    }
    if policy.allows(mt.ty, mt.subtype) {
        return Ok(Body::Other {
            content_type: ct,
            body,
        });
    }
    Err(BodyRefusal::UnsupportedType)
}

/// Where the next delimiter line starts at or after `from`: `--boundary` at the start of
/// the body or of a line, followed by `--` (close) and/or transport padding and a line
/// end (or the end of the body). Returns (start, start of the next line, is close).
fn next_delimiter(body: &[u8], delimiter: &[u8], mut from: usize) -> Option<(usize, usize, bool)> {
    while let Some(p) = memchr::memmem::find(body.get(from..)?, delimiter) {
        let pos = from + p;
        from = pos + 1;
        if pos > 0 && body[pos - 1] != b'\n' {
            continue;
        }
        let mut i = pos + delimiter.len();
        let close = body[i..].starts_with(b"--");
        if close {
            i += 2;
        }
        while matches!(body.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        match &body[i..] {
            [] => return Some((pos, i, close)),
            [b'\n', ..] => return Some((pos, i + 1, close)),
            [b'\r', b'\n', ..] => return Some((pos, i + 2, close)),
            _ => {}
        }
    }
    None
}

fn parse_multipart<'m>(
    body: &'m [u8],
    boundary: &str,
    policy: &BodyPolicy,
) -> Result<Multipart<'m>, BodyRefusal> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 2);
    delimiter.extend_from_slice(b"--");
    delimiter.extend_from_slice(boundary.as_bytes());
    let (_, mut start, mut close) =
        next_delimiter(body, &delimiter, 0).ok_or(BodyRefusal::MalformedMultipart)?;
    let mut parts: Vec<Part<'m>> = Vec::new();
    while !close {
        let (pos, next, is_close) =
            next_delimiter(body, &delimiter, start).ok_or(BodyRefusal::MalformedMultipart)?;
        // The line break before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
        let mut end = pos;
        if end > start && body[end - 1] == b'\n' {
            end -= 1;
            if end > start && body[end - 1] == b'\r' {
                end -= 1;
            }
        }
        if parts.len() == MAX_PARTS {
            return Err(BodyRefusal::TooManyParts);
        }
        let mut part = parse_part(&body[start..end], policy)?;
        // The content is a suffix of the part (its headers come first).
        part.at = end - part.body.len();
        if part.sdp && parts.iter().any(|p| p.sdp) {
            return Err(BodyRefusal::TwoSdpParts);
        }
        parts.push(part);
        (start, close) = (next, is_close);
    }
    if parts.is_empty() {
        return Err(BodyRefusal::MalformedMultipart);
    }
    Ok(Multipart { parts })
}

fn parse_part<'m>(raw: &'m [u8], policy: &BodyPolicy) -> Result<Part<'m>, BodyRefusal> {
    // Headers end at the first empty line; a part with no headers starts with one.
    let (head, content) = if let Some(rest) = raw.strip_prefix(b"\r\n") {
        (&raw[..0], rest)
    } else if let Some(rest) = raw.strip_prefix(b"\n") {
        (&raw[..0], rest)
    } else {
        let crlf = memchr::memmem::find(raw, b"\r\n\r\n").map(|i| (i, i + 4));
        let lf = memchr::memmem::find(raw, b"\n\n").map(|i| (i, i + 2));
        let (h, b) = match (crlf, lf) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).ok_or(BodyRefusal::MalformedMultipart)?,
        };
        (&raw[..h], &raw[b..])
    };
    let head = std::str::from_utf8(head).map_err(|_| BodyRefusal::MalformedMultipart)?;
    let mut part = Part {
        content_type: "text/plain",
        content_id: None,
        content_disposition: None,
        body: content,
        sdp: false,
        at: 0,
    };
    let mut typed = false;
    for (n, line) in head.lines().filter(|l| !l.is_empty()).enumerate() {
        if n == MAX_PART_HEADERS {
            return Err(BodyRefusal::TooManyParts);
        }
        if line.starts_with([' ', '\t']) {
            return Err(BodyRefusal::MalformedMultipart);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(BodyRefusal::MalformedMultipart)?;
        let (name, value) = (name.trim_end(), value.trim());
        if !is_token(name) {
            return Err(BodyRefusal::MalformedMultipart);
        }
        let long = long_header_name(name);
        if long.eq_ignore_ascii_case("content-type") {
            if typed {
                return Err(BodyRefusal::BadContentType);
            }
            typed = true;
            part.content_type = value;
        } else if long.eq_ignore_ascii_case("content-id") {
            part.content_id = Some(value);
        } else if long.eq_ignore_ascii_case("content-disposition") {
            part.content_disposition = Some(value);
        } else if long.eq_ignore_ascii_case("content-encoding") {
            if !value.eq_ignore_ascii_case("identity") {
                return Err(BodyRefusal::Encoded);
            }
        } else if long.eq_ignore_ascii_case("content-transfer-encoding") {
            let identity = ["7bit", "8bit", "binary"];
            if !identity.iter().any(|e| value.eq_ignore_ascii_case(e)) {
                return Err(BodyRefusal::Encoded);
            }
        }
        // Any other part header (Content-Length, Content-Description, ...) is dropped.
    }
    let mt = MediaType::parse(part.content_type).ok_or(BodyRefusal::BadContentType)?;
    if mt.is("application", "sdp") {
        part.sdp = true;
    } else if !policy.allows(mt.ty, mt.subtype) {
        return Err(BodyRefusal::DisallowedPart);
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Method;
    use proptest::prelude::*;
    use sbc_core::config::HeaderRules;

    const INVITE_HEAD: &str = "INVITE sip:+15551234@sbc.example SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.1.2.3:5061;branch=z9hG4bK1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:+15550001@pbx.internal>;tag=a1\r\n\
        To: <sip:+15551234@sbc.example>\r\n\
        Call-ID: c1@10.1.2.3\r\n\
        CSeq: 1 INVITE\r\n\
        Contact: <sip:pbx@10.1.2.3:5061;transport=tls>\r\n";

    fn invite(extra: &str, body: &str) -> SipMessage {
        let text = format!("{INVITE_HEAD}{extra}\r\n{body}");
        SipMessage::parse(text.as_bytes()).expect("test INVITE parses")
    }

    fn out_request() -> SipMessage {
        SipMessage::new_request(Method::Invite, "sip:+15551234@callee.example")
    }

    fn copied(policy: &HeaderPolicy, from: &SipMessage, toward: LegSide) -> SipMessage {
        let mut to = if from.is_request() {
            out_request()
        } else {
            SipMessage::new_response(200, "OK")
        };
        policy.copy_across(from, &mut to, toward);
        to
    }

    fn names(m: &SipMessage) -> Vec<String> {
        m.headers().map(|(n, _)| n.to_string()).collect()
    }

    const LEAKY: &str = "P-Asserted-Identity: <sip:+15550001@pbx.internal>\r\n\
        P-Preferred-Identity: <sip:alice@pbx.internal>\r\n\
        Diversion: <sip:+15559999@pbx.internal>;reason=unconditional\r\n\
        History-Info: <sip:bob@10.9.9.9>;index=1\r\n\
        Warning: 399 pbx7.corp.internal \"internal error\"\r\n\
        User-Agent: AcmePBX/4.2.1-build77\r\n\
        X-Internal-Addr: 10.9.9.9\r\n\
        x-trunk-id: 42\r\n\
        Call-Info: <http://10.9.9.9/photo.png>;purpose=icon\r\n\
        Organization: Example Corp\r\n\
        Unknown-Header: anything\r\n";

    #[test]
    fn leaky_headers_are_stripped_by_default() {
        let p = HeaderPolicy::default();
        let msg = invite(LEAKY, "");
        for toward in [LegSide::Callee, LegSide::Caller] {
            let out = copied(&p, &msg, toward);
            assert_eq!(names(&out), Vec::<String>::new(), "toward {toward:?}");
            let wire = String::from_utf8(out.to_bytes()).expect("utf8");
            for leak in [
                "pbx.internal",
                "10.9.9.9",
                "pbx7",
                "AcmePBX",
                "Example Corp",
            ] {
                assert!(!wire.contains(leak), "{leak} leaked: {wire}");
            }
        }
    }

    #[test]
    fn server_is_stripped_from_responses() {
        let p = HeaderPolicy::default();
        let mut resp = SipMessage::new_response(200, "OK");
        resp.push_header("Server", "AcmePBX/4.2.1");
        resp.push_header("Allow", "INVITE, ACK, BYE");
        let out = copied(&p, &resp, LegSide::Caller);
        assert_eq!(names(&out), vec!["Allow"]);
    }

    #[test]
    fn call_headers_cross_with_100rel_and_strip_removes_it() {
        let p = HeaderPolicy::default();
        let msg = invite(
            "Supported: 100rel, timer, replaces\r\n\
             Require: 100rel\r\n\
             Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n\
             Session-Expires: 1800;refresher=uac\r\n\
             Min-SE: 90\r\n\
             Subject: project call\r\n\
             Privacy: none\r\n\
             Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n",
            "",
        );
        let out = copied(&p, &msg, LegSide::Callee);
        let got: Vec<(String, String)> = out
            .headers()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let want: Vec<(String, String)> = [
            ("Supported", "100rel, timer, replaces"),
            ("Require", "100rel"),
            ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS"),
            ("Session-Expires", "1800;refresher=uac"),
            ("Min-SE", "90"),
            ("Subject", "project call"),
            ("Privacy", "none"),
            ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
        assert!(has_100rel(&out, "require") && has_100rel(&out, "k"));
        // Relayed unreliably: the tag goes, an emptied Require line goes with it.
        let mut out = out;
        strip_100rel(&mut out);
        assert!(!has_100rel(&out, "supported") && out.header("require").is_none());
        assert_eq!(
            out.header_values("supported").collect::<Vec<_>>(),
            ["timer", "replaces"]
        );
        assert_eq!(out.header("subject"), Some("project call"));
    }

    #[test]
    fn compact_forms_are_recognised() {
        let p = HeaderPolicy::default();
        // k = Supported, s = Subject, x = Session-Expires, u = Allow-Events, o = Event,
        // i / v / m / c / l are owned, b = Referred-By and r = Refer-To are stripped.
        let msg = invite(
            "k: 100rel, timer\r\ns: hi\r\nx: 300\r\nu: talk\r\no: refer\r\n\
             b: <sip:x@10.9.9.9>\r\nr: <sip:y@10.9.9.9>\r\ne: gzip\r\nc: application/sdp\r\n",
            "",
        );
        let out = copied(&p, &msg, LegSide::Callee);
        let got: Vec<(&str, &str)> = out.headers().collect();
        assert_eq!(
            got,
            vec![
                ("k", "100rel, timer"),
                ("s", "hi"),
                ("x", "300"),
                ("u", "talk"),
                ("o", "refer")
            ]
        );
        assert!(p.crosses("k", LegSide::Caller) && !p.crosses("i", LegSide::Caller));
        let strip = HeaderPolicy::new(&HeaderSettings {
            to_callee: HeaderRules {
                strip: vec!["subject".into()],
                ..HeaderRules::default()
            },
            ..HeaderSettings::default()
        });
        let out = copied(&strip, &msg, LegSide::Callee);
        assert!(out.header("subject").is_none(), "compact s stripped too");
    }

    fn settings() -> HeaderSettings {
        HeaderSettings {
            user_agent: Some("sbc-edge".into()),
            to_callee: HeaderRules {
                pass: vec!["x-account-id".into()],
                strip: vec!["subject".into()],
                add: vec![("X-Edge".into(), "edge-1".into())],
            },
            to_caller: HeaderRules {
                pass: vec!["warning".into()],
                strip: vec![],
                add: vec![("Subject".into(), "fixed".into())],
            },
            ..HeaderSettings::default()
        }
    }

    #[test]
    fn config_pass_strip_add_per_direction() {
        let p = HeaderPolicy::new(&settings());
        let msg = invite(
            "X-Account-Id: 77\r\nSubject: hello\r\nWarning: 399 h \"w\"\r\nUser-Agent: Acme/1\r\n",
            "",
        );
        let out = copied(&p, &msg, LegSide::Callee);
        let got: Vec<(&str, &str)> = out.headers().collect();
        assert_eq!(
            got,
            vec![
                ("X-Account-Id", "77"),
                ("User-Agent", "sbc-edge"),
                ("X-Edge", "edge-1")
            ]
        );
        // The other way: Warning passes, X-Account-Id does not, the added Subject
        // replaces the crossing one, and a response gets Server.
        let mut resp = SipMessage::new_response(180, "Ringing");
        for (n, v) in msg.headers() {
            resp.push_header(n, v);
        }
        let out = copied(&p, &resp, LegSide::Caller);
        let got: Vec<(&str, &str)> = out
            .headers()
            .filter(|(n, _)| !is_owned(long_header_name(n)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Warning", "399 h \"w\""),
                ("Server", "sbc-edge"),
                ("Subject", "fixed")
            ]
        );
        let toward_caller: Vec<&str> = p.crossing(LegSide::Caller).collect();
        assert!(toward_caller.contains(&"warning") && !toward_caller.contains(&"subject"));
    }

    #[test]
    fn settings_built_in_code_cannot_pass_owned_headers_or_inject_lines() {
        let p = HeaderPolicy::new(&HeaderSettings {
            user_agent: Some("x\r\nVia: evil".into()),
            to_callee: HeaderRules {
                pass: vec!["via".into(), "Contact".into(), "p-asserted-identity".into()],
                strip: vec!["privacy".into()],
                add: vec![
                    ("Route".into(), "<sip:evil>".into()),
                    ("X-Ok".into(), "a\nb".into()),
                ],
            },
            ..HeaderSettings::default()
        });
        let msg = invite("P-Asserted-Identity: <sip:a@b>\r\nPrivacy: id\r\n", "");
        let out = copied(&p, &msg, LegSide::Callee);
        let got: Vec<(&str, &str)> = out.headers().collect();
        assert_eq!(got, vec![("Privacy", "id")]);
    }

    fn trusting(caller: bool, callee: bool) -> HeaderPolicy {
        HeaderPolicy::new(&HeaderSettings {
            trust_caller_identity: caller,
            trust_callee_identity: callee,
            ..HeaderSettings::default()
        })
    }

    #[test]
    fn asserted_identity_follows_trust_and_privacy() {
        let pai = "P-Asserted-Identity: <sip:+15550001@carrier.example>, <tel:+15550001>\r\n";
        let plain = invite(pai, "");
        let private = invite(&format!("{pai}Privacy: id;critical\r\n"), "");
        let header_priv = invite(&format!("{pai}Privacy: header\r\n"), "");
        let none = invite(&format!("{pai}Privacy: none\r\n"), "");
        let has_pai = |p: &HeaderPolicy, m: &SipMessage| {
            copied(p, m, LegSide::Callee)
                .header_values("p-asserted-identity")
                .count()
        };
        // Untrusted source: never, whoever receives it.
        assert_eq!(has_pai(&trusting(false, false), &plain), 0);
        assert_eq!(has_pai(&trusting(false, true), &plain), 0);
        // Trusted source, trusted destination: passes, even with Privacy: id.
        assert_eq!(has_pai(&trusting(true, true), &plain), 2);
        assert_eq!(has_pai(&trusting(true, true), &private), 2);
        // Trusted source, leaving the trust domain: passes unless privacy is asked for.
        assert_eq!(has_pai(&trusting(true, false), &plain), 2);
        assert_eq!(has_pai(&trusting(true, false), &none), 2);
        assert_eq!(has_pai(&trusting(true, false), &private), 0);
        assert_eq!(has_pai(&trusting(true, false), &header_priv), 0);
        // Privacy itself crosses.
        let out = copied(&trusting(true, false), &private, LegSide::Callee);
        assert_eq!(out.header("privacy"), Some("id;critical"));
        // The other direction uses the callee side's trust.
        let mut resp = SipMessage::new_response(200, "OK");
        resp.push_header("P-Asserted-Identity", "<sip:callee@carrier.example>");
        assert!(copied(&trusting(true, false), &resp, LegSide::Caller)
            .header("p-asserted-identity")
            .is_none());
        assert!(copied(&trusting(false, true), &resp, LegSide::Caller)
            .header("p-asserted-identity")
            .is_some());
    }

    // ---- bodies ----

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 10.1.2.3\r\ns=-\r\nc=IN IP4 10.1.2.3\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n";
    const PIDF: &str = "<?xml version=\"1.0\"?>\r\n<presence entity=\"pres:alice@example.com\"/>";

    fn with_body(content_type: &str, body: &str) -> SipMessage {
        invite(&format!("Content-Type: {content_type}\r\n"), body)
    }

    fn multipart(boundary: &str, parts: &[(&str, &str)]) -> String {
        let mut s = String::from("preamble\r\n");
        for (headers, content) in parts {
            s.push_str(&format!("--{boundary}\r\n{headers}\r\n{content}\r\n"));
        }
        s.push_str(&format!("--{boundary}--\r\nepilogue"));
        s
    }

    fn pidf_policy() -> BodyPolicy {
        BodyPolicy::new(&BodySettings {
            allow: vec!["application/pidf+xml".into()],
        })
    }

    #[test]
    fn plain_sdp_any_case_with_parameters() {
        let p = BodyPolicy::default();
        for ct in [
            "application/sdp",
            "Application/SDP; charset=utf-8",
            "APPLICATION / sdp",
        ] {
            let msg = with_body(ct, SDP);
            let body = classify_body(&msg, &p).expect(ct);
            assert_eq!(body, Body::Sdp(SDP.as_bytes()), "{ct}");
            let out = body.rebuild(Some(b"v=0\r\nnew"), "x").expect("ok");
            assert_eq!(
                out,
                Some(Rebuilt {
                    content_type: "application/sdp".into(),
                    body: b"v=0\r\nnew".to_vec()
                })
            );
        }
        assert_eq!(
            classify_body(&invite("Content-Type: text/plain\r\n", ""), &p),
            Ok(Body::Empty)
        );
        assert_eq!(Body::Empty.rebuild(None, "x"), Ok(None));
    }

    #[test]
    fn multipart_with_sdp_and_allowed_pidf_is_rebuilt() {
        let raw = multipart(
            "unique-boundary-1",
            &[
                (
                    "Content-Type: application/sdp\r\nContent-Length: 99\r\n",
                    SDP,
                ),
                (
                    "Content-Type: application/PIDF+xml\r\nContent-ID: <loc1@pbx.example>\r\n\
                     Content-Disposition: by-reference;handling=optional\r\nX-Junk: 10.9.9.9\r\n",
                    PIDF,
                ),
            ],
        );
        let msg = with_body("Multipart/Mixed; boundary=\"unique-boundary-1\"", &raw);
        let body = classify_body(&msg, &pidf_policy()).expect("allowed");
        assert_eq!(body.sdp(), Some(SDP.as_bytes()));
        let Body::Multipart(m) = &body else {
            panic!("not multipart: {body:?}")
        };
        assert_eq!(m.parts().len(), 2);
        assert_eq!(m.parts()[1].content_id, Some("<loc1@pbx.example>"));
        let new_sdp = b"v=0\r\no=- 2 2 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\n";
        let out = body
            .rebuild(Some(new_sdp), "fresh0123")
            .expect("boundary ok")
            .expect("a body");
        assert_eq!(out.content_type, "multipart/mixed;boundary=fresh0123");
        let want = format!(
            "--fresh0123\r\nContent-Type: application/sdp\r\n\r\n{}\r\n\
             --fresh0123\r\nContent-Type: application/PIDF+xml\r\nContent-ID: <loc1@pbx.example>\r\n\
             Content-Disposition: by-reference;handling=optional\r\n\r\n{PIDF}\r\n--fresh0123--\r\n",
            std::str::from_utf8(new_sdp).expect("utf8")
        );
        assert_eq!(String::from_utf8(out.body.clone()).expect("utf8"), want);
        // The rebuilt body classifies again to the same parts (with the new SDP).
        let mut again = out_request();
        again.push_header("Content-Type", out.content_type.as_str());
        again.set_body(out.body);
        let body2 = classify_body(&again, &pidf_policy()).expect("rebuilt body passes");
        assert_eq!(body2.sdp(), Some(&new_sdp[..]));
        // A boundary that occurs in a part, or is not a boundary, is refused.
        assert_eq!(
            body.rebuild(Some(b"v=0\r\na=x:--zz9\r\n"), "zz9"),
            Err(BadBoundary)
        );
        assert!(body.rebuild(None, "zz9").is_ok());
        assert_eq!(body.rebuild(None, ""), Err(BadBoundary));
        assert_eq!(body.rebuild(None, "a\r\nb"), Err(BadBoundary));
        let quoted = body.rebuild(None, "a b:c").expect("ok").expect("body");
        assert_eq!(quoted.content_type, "multipart/mixed;boundary=\"a b:c\"");
    }

    #[test]
    fn multipart_with_lf_line_ends_and_no_sdp() {
        let raw = "--b1\nContent-Type: application/pidf+xml\n\n<x/>\n--b1--\n";
        let msg = with_body("multipart/mixed;boundary=b1", raw);
        let body = classify_body(&msg, &pidf_policy()).expect("allowed");
        assert_eq!(body.sdp(), None);
        let Body::Multipart(m) = &body else {
            panic!("{body:?}")
        };
        assert_eq!(m.parts()[0].body, b"<x/>");
    }

    #[test]
    fn a_classified_message_gives_its_body_again_without_parsing() {
        let p = BodyPolicy::new(&BodySettings {
            allow: vec!["application/pidf+xml".into(), "text/plain".into()],
        });
        let parts = [
            ("Content-Type: application/sdp\r\n", SDP),
            (
                "Content-Type: application/pidf+xml\r\nContent-ID: <l@x>\r\n\
                 Content-Disposition: render\r\n",
                PIDF,
            ),
            ("", "no headers: text/plain"),
        ];
        let bodies = [
            with_body("application/sdp", SDP),
            with_body("Application/PIDF+xml", PIDF),
            with_body("multipart/mixed;boundary=b", &multipart("b", &parts)),
            with_body(
                "multipart/mixed;boundary=b",
                "--b\nContent-Type: application/pidf+xml\n\n<x/>\n--b--\n",
            ),
            invite("", ""),
        ];
        for msg in bodies {
            let want = classify_body(&msg, &p).expect("allowed");
            let kept = Classified::new(msg.clone(), &p).expect("allowed");
            assert_eq!(kept.body(), want);
            assert_eq!(kept.msg().to_bytes(), msg.to_bytes());
        }
        let refused = Classified::new(with_body("application/isup", "x"), &p)
            .expect_err("isup is not allowed");
        assert_eq!(refused.refusal, BodyRefusal::UnsupportedType);
        assert_eq!(refused.msg.body(), b"x");
    }

    #[test]
    fn allowed_single_body_crosses_as_it_is() {
        let p = BodyPolicy::new(&BodySettings {
            allow: vec!["application/dtmf-relay".into()],
        });
        let msg = with_body("Application/DTMF-Relay", "Signal=5\r\nDuration=160\r\n");
        let body = classify_body(&msg, &p).expect("allowed");
        assert_eq!(
            body.rebuild(Some(b"ignored"), "b").expect("ok"),
            Some(Rebuilt {
                content_type: "Application/DTMF-Relay".into(),
                body: b"Signal=5\r\nDuration=160\r\n".to_vec()
            })
        );
    }

    #[test]
    fn refusals_name_the_reason() {
        let p = pidf_policy();
        let sdp_part = ("Content-Type: application/sdp\r\n", SDP);
        let isup = (
            "Content-Type: application/isup;version=itu-t92+\r\n",
            "\u{1}\u{2}",
        );
        let many: Vec<(&str, &str)> = (0..=MAX_PARTS)
            .map(|_| ("Content-Type: application/pidf+xml\r\n", "<x/>"))
            .collect();
        // Two Content-Type lines never reach the policy: the parser refuses them (400).
        let two = format!(
            "{INVITE_HEAD}Content-Type: application/sdp\r\nContent-Type: text/plain\r\n\r\n{SDP}"
        );
        assert!(SipMessage::parse(two.as_bytes()).is_err());
        let cases: Vec<(SipMessage, BodyRefusal)> = vec![
            (invite("", SDP), BodyRefusal::NoContentType),
            (with_body("application/isup", "\u{1}"), BodyRefusal::UnsupportedType),
            (with_body("text/html", "<b>"), BodyRefusal::UnsupportedType),
            (with_body("multipart/alternative;boundary=b", "x"), BodyRefusal::UnsupportedType),
            (with_body("sdp", SDP), BodyRefusal::BadContentType),
            (
                invite("Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n", SDP),
                BodyRefusal::Encoded,
            ),
            (
                with_body("multipart/mixed;boundary=b", &multipart("b", &[sdp_part, isup])),
                BodyRefusal::DisallowedPart,
            ),
            (
                with_body("multipart/mixed;boundary=b", &multipart("b", &[("", "no type")])),
                BodyRefusal::DisallowedPart,
            ),
            (
                with_body(
                    "multipart/mixed;boundary=b",
                    &multipart("b", &[("Content-Type: multipart/mixed;boundary=c\r\n", "x")]),
                ),
                BodyRefusal::DisallowedPart,
            ),
            (
                with_body("multipart/mixed;boundary=b", &multipart("b", &[sdp_part, sdp_part])),
                BodyRefusal::TwoSdpParts,
            ),
            (
                with_body("multipart/mixed;boundary=b", &multipart("b", &many)),
                BodyRefusal::TooManyParts,
            ),
            (
                with_body(
                    "multipart/mixed;boundary=b",
                    &multipart(
                        "b",
                        &[(
                            "Content-Type: application/sdp\r\nContent-Transfer-Encoding: base64\r\n",
                            "dj0w",
                        )],
                    ),
                ),
                BodyRefusal::Encoded,
            ),
            (with_body("multipart/mixed", "--b\r\n\r\nx\r\n--b--"), BodyRefusal::MalformedMultipart),
            (
                with_body("multipart/mixed;boundary=b", "--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n"),
                BodyRefusal::MalformedMultipart,
            ),
            (
                with_body("multipart/mixed;boundary=b", "no delimiter at all"),
                BodyRefusal::MalformedMultipart,
            ),
            (with_body("multipart/mixed;boundary=b", "--b--\r\n"), BodyRefusal::MalformedMultipart),
            (
                with_body("multipart/mixed;boundary=b", "--b\r\nContent-Type: application/sdp\r\n--b--"),
                BodyRefusal::MalformedMultipart,
            ),
            (
                with_body(
                    "multipart/mixed;boundary=b",
                    "--b\r\nContent-Type: application/sdp\r\n folded\r\n\r\nv=0\r\n--b--",
                ),
                BodyRefusal::MalformedMultipart,
            ),
        ];
        for (i, (msg, want)) in cases.iter().enumerate() {
            assert_eq!(classify_body(msg, &p), Err(*want), "case {i}");
        }
        // The same body passes once its type is allowed (the refusal is the policy's).
        let isup_ok = BodyPolicy::new(&BodySettings {
            allow: vec!["application/isup".into()],
        });
        assert!(classify_body(&cases[6].0, &isup_ok).is_ok());
        // A delimiter-looking line that is not one (a longer boundary) is content.
        let raw = "--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--bx\r\n--b--\r\n";
        let msg = with_body("multipart/mixed;boundary=b", raw);
        assert_eq!(
            classify_body(&msg, &p).map(|b| b.sdp().map(<[u8]>::to_vec)),
            Ok(Some(b"v=0\r\n--bx".to_vec()))
        );
    }

    #[test]
    fn refusal_labels_and_accept() {
        let labels: Vec<&str> = BodyRefusal::ALL.iter().map(|r| r.as_str()).collect();
        let mut dedup = labels.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), labels.len());
        assert!(BodyRefusal::ALL
            .iter()
            .all(|r| r.reason_phrase().starts_with("Unsupported Media Type")));
        assert_eq!(BodyRefusal::Encoded.accept_encoding(), Some("identity"));
        assert_eq!(BodyRefusal::UnsupportedType.accept_encoding(), None);
        assert_eq!(
            BodyPolicy::default().accept_header(),
            "application/sdp, multipart/mixed"
        );
        let p = BodyPolicy::new(&BodySettings {
            allow: vec!["application/pidf+xml".into(), "application/isup".into()],
        });
        assert_eq!(
            p.accept_header(),
            "application/sdp, multipart/mixed, application/pidf+xml, application/isup"
        );
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,14}",
            prop::sample::select(vec![
                "Via",
                "v",
                "i",
                "k",
                "s",
                "x",
                "c",
                "e",
                "l",
                "m",
                "Contact",
                "Route",
                "P-Asserted-Identity",
                "Privacy",
                "User-Agent",
                "Server",
                "Supported",
                "Require",
                "Subject",
                "X-Account-Id",
                "Warning",
                "Diversion",
            ])
            .prop_map(str::to_string),
        ]
    }

    proptest! {
        #[test]
        fn nothing_outside_the_allow_list_and_pass_crosses(
            headers in prop::collection::vec((header_name(), "[ -~]{0,20}"), 0..30),
            pass in prop::collection::vec(header_name(), 0..4),
            strip in prop::collection::vec(header_name(), 0..4),
            callee in any::<bool>(),
            request in any::<bool>(),
        ) {
            let toward = if callee { LegSide::Callee } else { LegSide::Caller };
            let rules = HeaderRules {
                pass: pass.iter().map(|p| p.to_ascii_lowercase()).collect(),
                strip: strip.iter().map(|s| s.to_ascii_lowercase()).collect(),
                add: vec![],
            };
            let p = HeaderPolicy::new(&HeaderSettings {
                to_callee: rules.clone(),
                to_caller: rules,
                ..HeaderSettings::default()
            });
            let mut from = if request { out_request() } else { SipMessage::new_response(200, "OK") };
            for (n, v) in &headers {
                from.push_header(n.as_str(), v.trim());
            }
            let out = copied(&p, &from, toward);
            for (name, _) in out.headers() {
                let long = long_header_name(name).to_ascii_lowercase();
                let allowed = DEFAULT_CROSSING.contains(&long.as_str())
                    || pass.iter().any(|p| p.eq_ignore_ascii_case(&long));
                prop_assert!(allowed, "{name} crossed");
                prop_assert!(!B2BUA_OWNED_HEADERS.contains(&long.as_str()), "{name} is owned");
                prop_assert!(!GOVERNED_HEADERS.iter().any(|(h, _)| *h == long) || long == "privacy",
                    "{name} is governed");
                let stripped = strip.iter().any(|s| s.eq_ignore_ascii_case(&long))
                    && !pass.iter().any(|p| p.eq_ignore_ascii_case(&long));
                prop_assert!(!stripped || long == "privacy", "{name} was stripped");
            }
        }
    }
}

/// One tenant's header and body policy, compiled once per config load.
#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    pub headers: HeaderPolicy,
    pub bodies: BodyPolicy,
}

impl TenantPolicy {
    /// Compile a tenant's `[tenants.headers]` and `[tenants.bodies]`.
    pub fn new(tenant: &sbc_core::config::Tenant) -> TenantPolicy {
        TenantPolicy {
            headers: HeaderPolicy::new(&tenant.headers),
            bodies: BodyPolicy::new(&tenant.bodies),
        }
    }
}
