//! The answers the gateway builds itself: 400/505 to what did not parse, 503 for limits
//! and load, and the other locally generated refusals (403, 404, 405, 415, 416, 420, 481,
//! 483, 501, and 400/481 to a PRACK that matches nothing).
//!
//! Owns: the shape of each locally built response and the metric label of its status
//! class. Must not: decide when to refuse (the B2BUA's request flow and the transport's
//! readers do).

use std::time::Duration;

use super::topology::BodyRefusal;
use crate::message::{
    default_reason, response_to, Method, ParseError, RequestUriFault, Salvaged, SipMessage,
};

/// Methods the gateway handles; sent in Allow on OPTIONS, 405 and 501 answers.
/// Retry-After of a call refused because its required recording failed: the SRS targets
/// all failed just now; a retry within seconds would meet them the same.
pub const RECORDING_RETRY_AFTER: Duration = Duration::from_secs(30);

pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY, PRACK";

/// True for a method the gateway relays (the ones in [`ALLOW`]).
pub fn allowed(m: &Method) -> bool {
    matches!(
        m,
        Method::Invite
            | Method::Ack
            | Method::Cancel
            | Method::Bye
            | Method::Options
            | Method::Update
            | Method::Info
            | Method::Notify
            | Method::Prack
    )
}

/// The answer to a request that did not parse (400 naming the fault, 505 for another SIP
/// version), built from what could be salvaged; `None` when there is nothing to address an
/// answer to (no Via) or it was an ACK. Transport readers call this themselves so that
/// garbage never reaches the core.
pub fn malformed_response(error: &ParseError, salvaged: Option<&Salvaged>) -> Option<SipMessage> {
    let s = salvaged?;
    if s.vias.is_empty() || s.method == Method::Ack {
        return None;
    }
    let mut resp = SipMessage::new_response(error.status(), error.reason_phrase());
    for v in &s.vias {
        resp.push_header("Via", v.as_str());
    }
    for (name, v) in [
        ("From", &s.from),
        ("To", &s.to),
        ("Call-ID", &s.call_id),
        ("CSeq", &s.cseq),
    ] {
        if let Some(v) = v {
            resp.push_header(name, v.as_str());
        }
    }
    Some(resp)
}

/// 503 Service Unavailable to `req` with Retry-After (whole seconds, at least 1) and a
/// Reason header naming the cause (RFC 3326): the answer to every limit or load refusal.
/// `to_tag` is the tag the refusal carries (RFC 3261 §8.2.6.2).
pub fn service_unavailable_tagged(
    req: &SipMessage,
    retry_after: Duration,
    cause: &str,
    to_tag: &str,
) -> SipMessage {
    let mut resp = response_to(req, 503, "Service Unavailable", Some(to_tag));
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    resp.push_header("Retry-After", secs.to_string());
    resp.push_header("Reason", format!("SIP;cause=503;text=\"{cause}\""));
    resp
}

/// [`service_unavailable_tagged`] with a fresh random To tag, for transport readers that
/// refuse before the core sees the request.
pub fn service_unavailable(req: &SipMessage, retry_after: Duration, cause: &str) -> SipMessage {
    let tag = format!("{:016x}", rand::random::<u64>());
    service_unavailable_tagged(req, retry_after, cause, &tag)
}

/// Why the gateway refuses a request itself: each maps to its status, its reason phrase
/// and the `reason` label of `sbc_sip_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A method token the gateway does not know: 501 (RFC 3261 §8.2.1).
    NotImplemented,
    /// A known method the gateway does not handle here: 405 with Allow.
    MethodNotAllowed,
    /// A Request-URI scheme other than sip/sips: 416 (RFC 3261 §8.2.2.1).
    UnsupportedScheme,
    /// A Request-URI that does not parse: 400 naming the fault.
    MalformedUri(&'static str),
    /// Max-Forwards reached 0: 483.
    TooManyHops,
    /// Require names option tags the gateway does not support: 420 with Unsupported.
    BadExtension(String),
    /// A body the tenant's body policy does not take: 415 with Accept (the value given).
    UnsupportedMediaType(BodyRefusal, String),
    /// Media control refused the SDP (status from the media error) with a Warning.
    Media(u16, String),
    /// A new request from a route target (targets answer calls, they do not place them).
    NotATrunkPeer,
    /// A peer that recognition did not map to a tenant: 403.
    UnrecognisedPeer,
    /// No dialog or transaction for an in-dialog request or CANCEL: 481.
    NoTransaction,
    /// No route for the called number: 404.
    NoRoute,
    /// A limit, load or drain refusal: 503 with Retry-After and Reason.
    Unavailable(Duration, &'static str),
    /// From/To/Call-ID/CSeq missing (the parser makes this unreachable): 400.
    MissingDialogHeaders,
    /// A PRACK whose RAck is missing or malformed (RFC 3262 §7.2): 400.
    BadRAck,
    /// A PRACK whose RAck matches no unacknowledged reliable provisional (RFC 3262 §3): 481.
    PrackUnknownRSeq,
    /// A PRACK outside an early dialog (the INVITE already has its final, or from the
    /// callee's side, which never gets a reliable provisional from us): 481.
    PrackOutsideEarlyDialog,
    /// The tenant requires recording and no recording server accepted in time: 503.
    RecordingUnavailable,
}

impl Refusal {
    /// The status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotImplemented => 501,
            Refusal::MethodNotAllowed => 405,
            Refusal::UnsupportedScheme => 416,
            Refusal::MalformedUri(_) | Refusal::MissingDialogHeaders | Refusal::BadRAck => 400,
            Refusal::TooManyHops => 483,
            Refusal::BadExtension(_) => 420,
            Refusal::UnsupportedMediaType(..) => BodyRefusal::STATUS,
            Refusal::Media(code, _) => *code,
            Refusal::NotATrunkPeer | Refusal::UnrecognisedPeer => 403,
            Refusal::NoTransaction
            | Refusal::PrackUnknownRSeq
            | Refusal::PrackOutsideEarlyDialog => 481,
            Refusal::NoRoute => 404,
            Refusal::Unavailable(..) | Refusal::RecordingUnavailable => 503,
        }
    }

    /// A stable metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::NotImplemented => "not_implemented",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::UnsupportedScheme => "unsupported_uri_scheme",
            Refusal::MalformedUri(_) => "malformed_request_uri",
            Refusal::TooManyHops => "too_many_hops",
            Refusal::BadExtension(_) => "bad_extension",
            Refusal::UnsupportedMediaType(..) => "unsupported_media_type",
            Refusal::Media(..) => "media",
            Refusal::NotATrunkPeer => "not_a_trunk_peer",
            Refusal::UnrecognisedPeer => "unrecognised_peer",
            Refusal::NoTransaction => "no_transaction",
            Refusal::NoRoute => "no_route",
            Refusal::Unavailable(..) => "unavailable",
            Refusal::MissingDialogHeaders => "missing_dialog_headers",
            Refusal::BadRAck => "bad_rack",
            Refusal::PrackUnknownRSeq => "prack_unknown_rseq",
            Refusal::PrackOutsideEarlyDialog => "prack_outside_early_dialog",
            Refusal::RecordingUnavailable => "recording_unavailable",
        }
    }

    /// The response to `req`, with `to_tag` as our tag.
    pub fn response(&self, req: &SipMessage, to_tag: &str) -> SipMessage {
        let code = self.status();
        let reason = match self {
            Refusal::MalformedUri(what) => format!("Bad Request (Malformed Request-URI: {what})"),
            Refusal::NotATrunkPeer => "Forbidden (Not A Trunk Peer)".into(),
            Refusal::UnrecognisedPeer => "Forbidden (Unrecognised Peer)".into(),
            Refusal::NoRoute => "Not Found (No Route)".into(),
            Refusal::MissingDialogHeaders => "Bad Request (Missing Dialog Headers)".into(),
            Refusal::BadRAck => "Bad Request (Malformed RAck)".into(),
            Refusal::UnsupportedMediaType(why, _) => why.reason_phrase().into(),
            _ => default_reason(code).to_string(),
        };
        if let Refusal::Unavailable(retry_after, cause) = self {
            return service_unavailable_tagged(req, *retry_after, cause, to_tag);
        }
        if let Refusal::RecordingUnavailable = self {
            return service_unavailable_tagged(
                req,
                RECORDING_RETRY_AFTER,
                "recording unavailable",
                to_tag,
            );
        }
        let mut resp = response_to(req, code, &reason, Some(to_tag));
        match self {
            Refusal::MethodNotAllowed | Refusal::NotImplemented => resp.push_header("Allow", ALLOW),
            Refusal::BadExtension(tags) => resp.push_header("Unsupported", tags.as_str()),
            Refusal::UnsupportedMediaType(why, accept) => {
                resp.push_header("Accept", accept.as_str());
                if let Some(enc) = why.accept_encoding() {
                    resp.push_header("Accept-Encoding", enc);
                }
            }
            Refusal::Media(_, why) => resp.push_header(
                "Warning",
                format!("399 sbc-edge \"{}\"", why.replace('"', "'")),
            ),
            _ => {}
        }
        resp
    }
}

impl From<RequestUriFault> for Refusal {
    fn from(f: RequestUriFault) -> Refusal {
        match f {
            RequestUriFault::UnsupportedScheme => Refusal::UnsupportedScheme,
            RequestUriFault::Malformed(what) => Refusal::MalformedUri(what),
        }
    }
}

/// The status class of a code as a metric label.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "6xx",
    }
}

/// A method as a bounded metric label (extension methods are all `other`).
pub fn method_label(m: &Method) -> &'static str {
    match m {
        Method::Invite => "INVITE",
        Method::Ack => "ACK",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Options => "OPTIONS",
        Method::Update => "UPDATE",
        Method::Info => "INFO",
        Method::Notify => "NOTIFY",
        Method::Prack => "PRACK",
        Method::Register => "REGISTER",
        Method::Subscribe => "SUBSCRIBE",
        Method::Refer => "REFER",
        Method::Message => "MESSAGE",
        Method::Publish => "PUBLISH",
        Method::Other(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&Method::Invite), "INVITE");
        assert_eq!(method_label(&Method::Other("FOO".into())), "other");
        assert_eq!(status_class(183), "1xx");
        assert_eq!(status_class(699), "6xx");
        assert!(allowed(&Method::Update));
        assert!(!allowed(&Method::Register));
    }
}
