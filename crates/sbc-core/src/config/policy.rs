//! What crosses the B2BUA, per tenant: `[tenants.headers]` (which headers pass, are
//! stripped or added in each direction, P-Asserted-Identity trust, User-Agent) and
//! `[tenants.bodies]` (which body types cross besides SDP).
//!
//! Owns: the headers the B2BUA builds itself ([`B2BUA_OWNED_HEADERS`]) or decides by a
//! dedicated rule ([`GOVERNED_HEADERS`]), the bounds on the lists, and the validation into
//! [`HeaderSettings`] and [`BodySettings`]. Must not: apply the policy to messages
//! (sbc-sip's `b2bua::topology` does, with the same list of owned headers).

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::media::LegSide;

/// Headers the B2BUA builds for each leg itself (lower case, long forms). They never
/// cross from one leg to the other, and config can neither pass, strip nor add them:
/// sbc-sip's `b2bua::topology` enforces the same list.
pub const B2BUA_OWNED_HEADERS: [&str; 16] = [
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
    // A body that crosses is rebuilt unencoded; an encoded one is refused (415).
    "content-encoding",
    "rseq",
    "rack",
    "path",
    "service-route",
];

/// Headers whose crossing is decided by a dedicated rule, not by `pass` / `strip` /
/// `add`: (header, what governs it).
pub const GOVERNED_HEADERS: [(&str, &str); 4] = [
    (
        "p-asserted-identity",
        "set trust_caller_identity / trust_callee_identity (RFC 3325)",
    ),
    (
        "privacy",
        "it always crosses: it is the user's privacy request (RFC 3323)",
    ),
    ("user-agent", "set user_agent"),
    ("server", "set user_agent"),
];

/// Most names in one `pass`, `strip` or `add` list: policies are audited by reading them,
/// and a few dozen already covers every trunk we know of.
pub const MAX_HEADER_RULES: usize = 64;
/// Longest configured header value (`user_agent`, `add`): a product token or a tag,
/// well under a message's size bound.
pub const MAX_CONFIGURED_HEADER_VALUE: usize = 256;
/// Most extra body types a tenant may allow: each is a MIME type an application needs
/// (PIDF-LO, ISUP, DTMF relay, ...), not an open list.
pub const MAX_ALLOWED_BODY_TYPES: usize = 16;

/// Header rules for messages travelling in one direction (toward one leg).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Headers that cross in addition to the defaults (lower case, long forms).
    pub pass: Vec<String>,
    /// Headers that do not cross even though the defaults would pass them (lower case).
    pub strip: Vec<String>,
    /// Fixed headers added to every message (name as written, value), sorted by name.
    /// A header named here replaces a crossing one of the same name.
    pub add: Vec<(String, String)>,
}

/// A tenant's header policy as configured (`[tenants.headers]`). The defaults (every
/// field at its `Default`) are the topology-hiding defaults of `sbc_sip::b2bua::topology`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderSettings {
    /// P-Asserted-Identity from the caller side (the tenant's platform) is trusted and
    /// passes (RFC 3325 §4 trust domain).
    pub trust_caller_identity: bool,
    /// P-Asserted-Identity from the callee side (the tenant's route target) is trusted.
    pub trust_callee_identity: bool,
    /// Value written as User-Agent (requests) / Server (responses); `None`: removed.
    pub user_agent: Option<String>,
    /// Messages travelling toward the callee (the route target).
    pub to_callee: HeaderRules,
    /// Messages travelling toward the caller (the platform).
    pub to_caller: HeaderRules,
}

impl HeaderSettings {
    /// The rules for messages travelling toward `side`.
    pub fn rules(&self, toward: LegSide) -> &HeaderRules {
        match toward {
            LegSide::Callee => &self.to_callee,
            LegSide::Caller => &self.to_caller,
        }
    }

    /// Whether P-Asserted-Identity coming from `side` is trusted.
    pub fn trusts(&self, side: LegSide) -> bool {
        match side {
            LegSide::Caller => self.trust_caller_identity,
            LegSide::Callee => self.trust_callee_identity,
        }
    }
}

/// A tenant's body policy as configured (`[tenants.bodies]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodySettings {
    /// MIME types (lower case `type/subtype`) that cross besides `application/sdp`,
    /// alone or as parts of a `multipart/mixed` body.
    pub allow: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHeaders {
    trust_caller_identity: bool,
    trust_callee_identity: bool,
    user_agent: Option<String>,
    to_callee: RawHeaderRules,
    to_caller: RawHeaderRules,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHeaderRules {
    pass: Vec<String>,
    strip: Vec<String>,
    add: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBodies {
    allow: Vec<String>,
}

/// RFC 3261 §25.1 token characters.
fn is_sip_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// A configured header name, lower case; refused if it is not a token, a compact form,
/// owned by the B2BUA, or governed by another key.
fn header_name(name: &str, key: &str, tenant: &str) -> Result<String, ConfigError> {
    if !is_sip_token(name) {
        return Err(invalid(
            key,
            format!("tenant {tenant:?}: {name:?} is not a header name"),
        ));
    }
    if name.len() == 1 {
        return Err(invalid(
            key,
            format!(
                "tenant {tenant:?}: {name:?} is a compact form (RFC 3261 §7.3.3); write the full header name"
            ),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if B2BUA_OWNED_HEADERS.contains(&lower.as_str()) {
        return Err(invalid(
            key,
            format!(
                "tenant {tenant:?}: {name} is built by the B2BUA for each leg and can never be configured to cross"
            ),
        ));
    }
    if let Some((_, by)) = GOVERNED_HEADERS.iter().find(|(h, _)| *h == lower) {
        return Err(invalid(
            key,
            format!("tenant {tenant:?}: {name} is not configurable here: {by}"),
        ));
    }
    Ok(lower)
}

/// A configured header value: not empty, bounded, no control characters (CR/LF would
/// inject header lines).
fn header_value(value: &str, key: &str, tenant: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_CONFIGURED_HEADER_VALUE {
        return Err(invalid(
            key,
            format!("tenant {tenant:?}: must be 1 to {MAX_CONFIGURED_HEADER_VALUE} bytes"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(invalid(
            key,
            format!("tenant {tenant:?}: must not contain CR, LF or other control characters"),
        ));
    }
    Ok(value.to_string())
}

fn validate_header_rules(
    r: &RawHeaderRules,
    key: &str,
    tenant: &str,
) -> Result<HeaderRules, ConfigError> {
    for (field, len) in [
        ("pass", r.pass.len()),
        ("strip", r.strip.len()),
        ("add", r.add.len()),
    ] {
        if len > MAX_HEADER_RULES {
            return Err(invalid(
                format!("{key}.{field}"),
                format!("tenant {tenant:?}: at most {MAX_HEADER_RULES} headers"),
            ));
        }
    }
    let mut rules = HeaderRules::default();
    for (field, list) in [("pass", &r.pass), ("strip", &r.strip)] {
        for (i, name) in list.iter().enumerate() {
            let k = format!("{key}.{field}[{i}]");
            let lower = header_name(name, &k, tenant)?;
            if rules.pass.contains(&lower) || rules.strip.contains(&lower) {
                return Err(invalid(
                    k,
                    format!("tenant {tenant:?}: {name} is listed twice in pass / strip"),
                ));
            }
            match field {
                "pass" => rules.pass.push(lower),
                _ => rules.strip.push(lower),
            }
        }
    }
    for (name, value) in &r.add {
        let k = format!("{key}.add.{name}");
        let lower = header_name(name, &k, tenant)?;
        if rules.strip.contains(&lower) {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: {name} is both stripped and added"),
            ));
        }
        if rules.add.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: {name} is added twice"),
            ));
        }
        rules
            .add
            .push((name.clone(), header_value(value, &k, tenant)?));
    }
    Ok(rules)
}

pub(super) fn validate_headers(
    h: &RawHeaders,
    key: &str,
    tenant: &str,
) -> Result<HeaderSettings, ConfigError> {
    let user_agent = match &h.user_agent {
        Some(v) => Some(header_value(v, &format!("{key}.user_agent"), tenant)?),
        None => None,
    };
    Ok(HeaderSettings {
        trust_caller_identity: h.trust_caller_identity,
        trust_callee_identity: h.trust_callee_identity,
        user_agent,
        to_callee: validate_header_rules(&h.to_callee, &format!("{key}.to_callee"), tenant)?,
        to_caller: validate_header_rules(&h.to_caller, &format!("{key}.to_caller"), tenant)?,
    })
}

pub(super) fn validate_bodies(
    b: &RawBodies,
    key: &str,
    tenant: &str,
) -> Result<BodySettings, ConfigError> {
    if b.allow.len() > MAX_ALLOWED_BODY_TYPES {
        return Err(invalid(
            format!("{key}.allow"),
            format!("tenant {tenant:?}: at most {MAX_ALLOWED_BODY_TYPES} types"),
        ));
    }
    let mut allow: Vec<String> = Vec::new();
    for (i, t) in b.allow.iter().enumerate() {
        let k = format!("{key}.allow[{i}]");
        let lower = t.trim().to_ascii_lowercase();
        let valid = lower
            .split_once('/')
            .is_some_and(|(ty, sub)| is_sip_token(ty) && is_sip_token(sub));
        if !valid {
            return Err(invalid(
                k,
                format!(
                    "tenant {tenant:?}: {t:?} is not a MIME type (type/subtype, no parameters)"
                ),
            ));
        }
        if lower == "application/sdp" {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: application/sdp always crosses (it is anchored); do not list it"),
            ));
        }
        if lower.starts_with("multipart/") {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: {t} cannot be allowed: multipart/mixed is handled part by part, other multiparts and nesting are refused"),
            ));
        }
        if allow.contains(&lower) {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: {t} is listed twice"),
            ));
        }
        allow.push(lower);
    }
    Ok(BodySettings { allow })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{err, files, LISTENER, TENANT};
    use crate::config::Config;

    #[test]
    fn header_and_body_policy_config() {
        let f = files();
        let cfg = Config::from_toml_str(&format!("{LISTENER}{TENANT}"), &f.dir).expect("valid");
        assert_eq!(cfg.tenants[0].headers, HeaderSettings::default());
        assert_eq!(cfg.tenants[0].bodies, BodySettings::default());
        let text = format!(
            "{LISTENER}{TENANT}[tenants.headers]\ntrust_caller_identity = true\nuser_agent = \"sbc-edge\"\n\
             [tenants.headers.to_callee]\npass = [\"X-Account-Id\"]\nstrip = [\"Subject\"]\n\
             add = {{ \"X-Edge\" = \"edge-1\" }}\n[tenants.headers.to_caller]\npass = [\"Alert-Info\"]\n\
             [tenants.bodies]\nallow = [\"Application/PIDF+XML\"]\n"
        );
        let cfg = Config::from_toml_str(&text, &f.dir).expect("valid");
        let h = &cfg.tenants[0].headers;
        assert!(h.trusts(LegSide::Caller) && !h.trusts(LegSide::Callee));
        assert_eq!(h.user_agent.as_deref(), Some("sbc-edge"));
        assert_eq!(
            h.rules(LegSide::Callee),
            &HeaderRules {
                pass: vec!["x-account-id".into()],
                strip: vec!["subject".into()],
                add: vec![("X-Edge".into(), "edge-1".into())],
            }
        );
        assert_eq!(
            h.rules(LegSide::Caller).pass,
            vec!["alert-info".to_string()]
        );
        assert_eq!(
            cfg.tenants[0].bodies.allow,
            vec!["application/pidf+xml".to_string()]
        );
    }

    #[test]
    fn header_and_body_policy_errors_name_tenant_and_key() {
        let f = files();
        let cases: &[(&str, &str, &str)] = &[
            ("[tenants.headers]\nbogus = 1\n", "bogus", ""),
            ("[tenants.headers.to_callee]\nbogus = 1\n", "bogus", ""),
            ("[tenants.bodies]\nbogus = 1\n", "bogus", ""),
            (
                "[tenants.headers.to_callee]\npass = [\"Via\"]\n",
                "tenants[0].headers.to_callee.pass[0]",
                "never be configured to cross",
            ),
            (
                "[tenants.headers.to_caller]\npass = [\"X-A\", \"Record-Route\"]\n",
                "tenants[0].headers.to_caller.pass[1]",
                "Record-Route",
            ),
            (
                "[tenants.headers.to_caller]\nstrip = [\"content-type\"]\n",
                "tenants[0].headers.to_caller.strip[0]",
                "B2BUA",
            ),
            (
                "[tenants.headers.to_callee]\nadd = { \"Call-ID\" = \"x\" }\n",
                "tenants[0].headers.to_callee.add.Call-ID",
                "B2BUA",
            ),
            (
                "[tenants.headers.to_callee]\npass = [\"i\"]\n",
                "tenants[0].headers.to_callee.pass[0]",
                "compact form",
            ),
            (
                "[tenants.headers.to_callee]\npass = [\"X Bad\"]\n",
                "tenants[0].headers.to_callee.pass[0]",
                "not a header name",
            ),
            (
                "[tenants.headers.to_callee]\nadd = { \"X-Edge\" = \"a\\r\\nVia: evil\" }\n",
                "tenants[0].headers.to_callee.add.X-Edge",
                "CR, LF",
            ),
            (
                "[tenants.headers]\nuser_agent = \"sbc\\nX: y\"\n",
                "tenants[0].headers.user_agent",
                "CR, LF",
            ),
            (
                "[tenants.headers]\nuser_agent = \"\"\n",
                "tenants[0].headers.user_agent",
                "1 to 256",
            ),
            (
                "[tenants.headers.to_callee]\npass = [\"P-Asserted-Identity\"]\n",
                "tenants[0].headers.to_callee.pass[0]",
                "trust_caller_identity",
            ),
            (
                "[tenants.headers.to_callee]\nadd = { \"User-Agent\" = \"x\" }\n",
                "tenants[0].headers.to_callee.add.User-Agent",
                "user_agent",
            ),
            (
                "[tenants.headers.to_callee]\npass = [\"X-A\"]\nstrip = [\"x-a\"]\n",
                "tenants[0].headers.to_callee.strip[0]",
                "twice",
            ),
            (
                "[tenants.headers.to_callee]\nstrip = [\"X-A\"]\nadd = { \"X-A\" = \"1\" }\n",
                "tenants[0].headers.to_callee.add.X-A",
                "stripped and added",
            ),
            (
                "[tenants.bodies]\nallow = [\"application/sdp\"]\n",
                "tenants[0].bodies.allow[0]",
                "always crosses",
            ),
            (
                "[tenants.bodies]\nallow = [\"multipart/related\"]\n",
                "tenants[0].bodies.allow[0]",
                "cannot be allowed",
            ),
            (
                "[tenants.bodies]\nallow = [\"pidf\"]\n",
                "tenants[0].bodies.allow[0]",
                "not a MIME type",
            ),
            (
                "[tenants.bodies]\nallow = [\"application/isup; version=itu-t92+\"]\n",
                "tenants[0].bodies.allow[0]",
                "not a MIME type",
            ),
        ];
        for (extra, key, message) in cases {
            let e = err(&f, &format!("{LISTENER}{TENANT}{extra}"));
            assert!(e.contains(key), "{extra:?}: {e}");
            assert!(e.contains(message), "{extra:?}: {e}");
            if !message.is_empty() {
                assert!(e.contains("tenant \"t1\""), "{extra:?}: {e}");
            }
        }
    }

    #[test]
    fn owned_headers_are_lower_case_long_forms() {
        for h in B2BUA_OWNED_HEADERS
            .iter()
            .chain(GOVERNED_HEADERS.iter().map(|(h, _)| h))
        {
            assert!(
                h.len() > 1 && is_sip_token(h) && *h == h.to_ascii_lowercase(),
                "{h}"
            );
        }
    }
}
