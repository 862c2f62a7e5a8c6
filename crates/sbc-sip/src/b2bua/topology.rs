//! LEAD SHIM (replaced by the topology helper's module at merge): the legacy deny-list.

use sbc_core::media::LegSide;

use crate::message::SipMessage;

pub const ACCEPT_DEFAULT: &str = "application/sdp";

const NOT_RELAYED: &[&str] = &[
    "via",
    "route",
    "record-route",
    "contact",
    "call-id",
    "from",
    "to",
    "cseq",
    "max-forwards",
    "content-length",
    "content-type",
    "rseq",
    "rack",
    "path",
    "service-route",
];

fn long_name(lower: &str) -> &str {
    match lower {
        "v" => "via",
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        other => other,
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy;

impl HeaderPolicy {
    pub fn copy_across(&self, from: &SipMessage, to: &mut SipMessage, _toward: LegSide) {
        for (name, value) in from.headers() {
            let lower = name.to_ascii_lowercase();
            let canonical = long_name(&lower);
            if NOT_RELAYED.contains(&canonical) {
                continue;
            }
            if canonical == "supported" || canonical == "require" {
                let kept: Vec<&str> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.eq_ignore_ascii_case("100rel") && !t.is_empty())
                    .collect();
                if !kept.is_empty() {
                    to.push_header(name, kept.join(", "));
                }
                continue;
            }
            to.push_header(name, value);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct BodyPolicy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRefusal {}

impl BodyRefusal {
    pub fn accept_header(&self) -> String {
        ACCEPT_DEFAULT.to_string()
    }
    pub fn as_str(&self) -> &'static str {
        "unsupported_body"
    }
}

pub fn check_request_body(_p: &BodyPolicy, _msg: &SipMessage) -> Result<(), BodyRefusal> {
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    pub headers: HeaderPolicy,
    pub bodies: BodyPolicy,
}
