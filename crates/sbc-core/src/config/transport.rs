//! SIP transports in the config: `transport` on `[[listeners]]`, the scheme and
//! `;transport=` of route targets, and the checks that tie them together.
//!
//! Owns: [`Transport`], [`TargetUri`] and its parser [`parse_target`], the rules for a
//! listener's TLS keys by transport, which listeners cannot share an address, and which
//! targets need a listener of their transport. Must not: open sockets (sbc-sip does).
//!
//! TLS is the default everywhere. Plain TCP and UDP exist for inside networks (a PBX or
//! carrier trunk behind the gateway) and must be asked for by name.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

use super::{invalid, ConfigError, Listener, RawListener, Tenant};

/// Port of a `sip:` target without one (RFC 3261 §19.1.2).
pub const SIP_DEFAULT_PORT: u16 = 5060;
/// Port of a `sips:` target without one (RFC 3261 §19.1.2).
pub const SIPS_DEFAULT_PORT: u16 = 5061;

/// A SIP transport (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// SIP over TLS over TCP (the default).
    #[default]
    Tls,
    /// SIP over plain TCP: inside networks only.
    Tcp,
    /// SIP over UDP: inside networks only.
    Udp,
}

impl Transport {
    /// The config spelling (`tls`, `tcp`, `udp`): also a bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// The token in a Via header (`SIP/2.0/TLS`, RFC 3261 §20.42).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Tls => "TLS",
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        }
    }

    /// The transport named by a Via token, case-insensitively.
    pub fn from_via_token(token: &str) -> Option<Transport> {
        [Transport::Tls, Transport::Tcp, Transport::Udp]
            .into_iter()
            .find(|t| t.via_token().eq_ignore_ascii_case(token))
    }

    /// True for TCP and TLS: no retransmissions, stream framing (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        self != Transport::Udp
    }

    /// A SIP URI reached over this transport: `sips:` for TLS, `sip:` for UDP (the
    /// default of a `sip:` URI), `sip:...;transport=tcp` for TCP. `user_part` is `user@`
    /// or empty; `host_port` is `host[:port]`, IPv6 in brackets.
    pub fn uri(self, user_part: &str, host_port: &str) -> String {
        match self {
            Transport::Tls => format!("sips:{user_part}{host_port}"),
            Transport::Udp => format!("sip:{user_part}{host_port}"),
            Transport::Tcp => format!("sip:{user_part}{host_port};transport=tcp"),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A route target: `sips:host[:port]` (TLS) or `sip:host[:port];transport=udp|tcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUri {
    /// How the target is reached.
    pub transport: Transport,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The URI's port, or the scheme's default when it has none.
    pub port: u16,
    /// True if the URI gave the port. A host name without a port is resolved by NAPTR and
    /// SRV (RFC 3263 §4.1); with one, by A/AAAA only (§4.2).
    pub port_explicit: bool,
}

impl TargetUri {
    /// `host:port`, IPv6 in brackets.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for TargetUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A name without a port is resolved by NAPTR/SRV: the port comes from DNS.
        let by_srv = !self.port_explicit && self.host.parse::<std::net::IpAddr>().is_err();
        let where_ = if by_srv {
            self.host.clone()
        } else {
            self.host_port()
        };
        match self.transport {
            Transport::Tls => write!(f, "sips:{where_}"),
            t => write!(f, "sip:{where_};transport={t}"),
        }
    }
}

/// `sips:host[:port]` (port 5061 when absent), or `sip:host[:port][;transport=udp|tcp]`
/// (port 5060 when absent, UDP without a transport parameter as RFC 3263 §4.1 has it for
/// a target with a numeric address or port). Host a name, an IPv4 address or a bracketed
/// IPv6 address. No user part and no other parameters: a route target is a trunk.
pub fn parse_target(s: &str) -> Result<TargetUri, String> {
    let (rest, secure) = if let Some(r) = s.strip_prefix("sips:") {
        (r, true)
    } else if let Some(r) = s.strip_prefix("sip:") {
        (r, false)
    } else {
        return Err(format!(
            "{s:?} must be sips:host[:port] or sip:host[:port];transport=udp|tcp"
        ));
    };
    let (addr, params) = match rest.split_once(';') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let transport = match (secure, params) {
        (true, None) => Transport::Tls,
        (true, Some(_)) => return Err(format!("{s:?}: a sips: target takes no parameters")),
        (false, None) => Transport::Udp,
        (false, Some(p)) => match p.to_ascii_lowercase().as_str() {
            "transport=udp" => Transport::Udp,
            "transport=tcp" => Transport::Tcp,
            _ => {
                return Err(format!(
                    "{s:?}: the only parameter is transport=udp or transport=tcp (TLS: use sips:)"
                ))
            }
        },
    };
    if addr.contains(['@', ';', '?', '/', ' ']) {
        return Err(format!("{s:?}: only host[:port] may follow the scheme"));
    }
    let (host, port) = if let Some(v6) = addr.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed IPv6 bracket"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{s:?}: {h:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: junk after ]"))?,
            ),
        };
        (h.to_string(), port)
    } else {
        match addr.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (addr.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?}: empty host"));
    }
    let port_explicit = port.is_some();
    let port = match port {
        None if secure => SIPS_DEFAULT_PORT,
        None => SIP_DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("{s:?}: {p:?} is not a port")),
        },
    };
    Ok(TargetUri {
        transport,
        host,
        port,
        port_explicit,
    })
}

/// The TLS keys of a listener against its transport: a TLS listener needs a certificate
/// and key; a plain one must have none of the TLS settings (they would silently do
/// nothing). Returns the certificate and key paths of a TLS listener.
pub(super) fn listener_tls_paths<'a>(
    l: &'a RawListener,
    key: &str,
) -> Result<Option<(&'a std::path::Path, &'a std::path::Path)>, ConfigError> {
    match l.transport {
        Transport::Tls => match (&l.certificate, &l.private_key) {
            (Some(c), Some(k)) => Ok(Some((c.as_path(), k.as_path()))),
            (None, _) => Err(invalid(
                format!("{key}.certificate"),
                "a TLS listener needs `certificate` and `private_key` (plain listeners: transport = \"tcp\" or \"udp\")",
            )),
            (_, None) => Err(invalid(
                format!("{key}.private_key"),
                "a TLS listener needs `certificate` and `private_key`",
            )),
        },
        plain => {
            let tls_keys = [
                ("certificate", l.certificate.is_some()),
                ("private_key", l.private_key.is_some()),
                ("client_ca", l.client_ca.is_some()),
                ("require_client_cert", l.require_client_cert),
            ];
            match tls_keys.iter().find(|(_, set)| *set) {
                Some((name, _)) => Err(invalid(
                    format!("{key}.{name}"),
                    format!(
                        "a {plain} listener has no TLS: remove `{name}` or use transport = \"tls\""
                    ),
                )),
                None => Ok(None),
            }
        }
    }
}

/// True if two listeners cannot both bind: the same protocol (TCP for TLS and plain TCP,
/// or UDP) and the same port (not 0, which the kernel picks afresh for each) on the same
/// address, or on the same IP family where one address is the wildcard. A UDP and a TCP
/// listener may share a port, as SIP usually does.
pub(super) fn listeners_clash(a: &Listener, b: &Listener) -> bool {
    (a.transport == Transport::Udp) == (b.transport == Transport::Udp)
        && addresses_clash(a.address, b.address)
}

fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

/// Transport rules of routes: a UDP target is sent to from a UDP listener's socket (its
/// address is the Via the target answers to, RFC 3261 §18.2.2), so one must exist; TLS
/// settings (`ca_file`, `server_name`) on a plain target would do nothing and are refused.
pub(super) fn check_route_transports(
    listeners: &[Listener],
    tenants: &[Tenant],
    raw_tenants: &[super::RawTenant],
) -> Result<(), ConfigError> {
    let has_udp = listeners.iter().any(|l| l.transport == Transport::Udp);
    for (i, (t, raw)) in tenants.iter().zip(raw_tenants).enumerate() {
        for (j, (r, raw_r)) in t.routes.iter().zip(&raw.routes).enumerate() {
            let k = format!("tenants[{i}].routes[{j}]");
            for (n, target) in r.targets.iter().enumerate() {
                if target.uri.transport == Transport::Udp && !has_udp {
                    let key = if raw_r.target.is_some() {
                        format!("{k}.target")
                    } else {
                        format!("{k}.targets[{n}].uri")
                    };
                    return Err(invalid(
                        key,
                        format!(
                            "{} needs a [[listeners]] with transport = \"udp\" to send from",
                            target.uri
                        ),
                    ));
                }
            }
            // TLS settings apply to the route's `sips:` targets: with none, they would do
            // nothing.
            if r.targets.iter().all(|t| t.uri.transport != Transport::Tls) {
                if raw_r.ca_file.is_some() {
                    return Err(invalid(
                        format!("{k}.ca_file"),
                        "no target of this route is TLS: remove `ca_file`",
                    ));
                }
                if raw_r.server_name.is_some() {
                    return Err(invalid(
                        format!("{k}.server_name"),
                        "no target of this route is TLS: remove `server_name`",
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(transport: Transport, host: &str, port: u16, port_explicit: bool) -> TargetUri {
        TargetUri {
            transport,
            host: host.into(),
            port,
            port_explicit,
        }
    }

    #[test]
    fn targets_by_scheme_and_transport() {
        assert_eq!(
            parse_target("sips:[2001:db8::1]:5070"),
            Ok(t(Transport::Tls, "2001:db8::1", 5070, true))
        );
        assert_eq!(
            parse_target("sips:10.0.0.1"),
            Ok(t(Transport::Tls, "10.0.0.1", 5061, false))
        );
        assert_eq!(
            parse_target("sip:10.0.0.1;transport=udp"),
            Ok(t(Transport::Udp, "10.0.0.1", 5060, false))
        );
        assert_eq!(
            parse_target("sip:pbx.example:5080;transport=TCP"),
            Ok(t(Transport::Tcp, "pbx.example", 5080, true))
        );
        assert_eq!(
            parse_target("sip:[2001:db8::2]"),
            Ok(t(Transport::Udp, "2001:db8::2", 5060, false))
        );
        assert_eq!(
            parse_target("sips:[2001:db8::1]").map(|t| t.to_string()),
            Ok("sips:[2001:db8::1]:5061".to_string())
        );
        assert_eq!(
            parse_target("sip:10.0.0.1:5070;transport=tcp").map(|t| t.to_string()),
            Ok("sip:10.0.0.1:5070;transport=tcp".to_string())
        );
        assert_eq!(
            parse_target("sips:trunk.example").map(|t| (t.port_explicit, t.to_string())),
            Ok((false, "sips:trunk.example".to_string())),
            "a name without a port is resolved by NAPTR/SRV, shown without one"
        );
        assert_eq!(
            parse_target("sip:pbx.example;transport=tcp").map(|t| t.to_string()),
            Ok("sip:pbx.example;transport=tcp".to_string())
        );
        assert_eq!(
            parse_target("sips:trunk.example:5062").map(|t| t.to_string()),
            Ok("sips:trunk.example:5062".to_string())
        );
        for bad in [
            "sips:",
            "sip:",
            "sips:h:0",
            "sips:h:99999",
            "sips:u@h",
            "sip:u@h;transport=udp",
            "tls:h",
            "sips:h;transport=tls",
            "sips:h;transport=tcp",
            "sip:h;transport=tls",
            "sip:h;transport=sctp",
            "sip:h;transport=udp;lr",
            "sip:h;maddr=10.0.0.1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn via_tokens_round_trip() {
        for tr in [Transport::Tls, Transport::Tcp, Transport::Udp] {
            assert_eq!(Transport::from_via_token(tr.via_token()), Some(tr));
        }
        assert_eq!(Transport::from_via_token("udp"), Some(Transport::Udp));
        assert_eq!(Transport::from_via_token("SCTP"), None);
        assert!(!Transport::Udp.is_reliable());
        assert!(Transport::Tcp.is_reliable());
    }

    fn dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sbc-core-transport-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = super::super::self_signed(&["localhost".into()]).expect("cert");
        std::fs::write(dir.join("cert.pem"), cert).expect("w");
        std::fs::write(dir.join("key.pem"), key).expect("w");
        dir
    }

    const TLS: &str = "[[listeners]]\nname=\"out\"\naddress=\"127.0.0.1:5061\"\ncertificate=\"cert.pem\"\nprivate_key=\"key.pem\"\n";
    const UDP: &str = "[[listeners]]\nname=\"in\"\ntransport=\"udp\"\naddress=\"127.0.0.1:5060\"\n";

    fn tenant(target: &str) -> String {
        format!("[[tenants]]\nid=\"t\"\n[tenants.recognition]\nsource_cidrs=[\"10.0.0.0/8\"]\n[[tenants.routes]]\nprefix=\"\"\ntarget=\"{target}\"\n")
    }

    fn check(text: &str) -> Result<super::super::Config, String> {
        super::super::Config::from_toml_str(text, &dir()).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_listeners_and_targets_validate() {
        let text = format!(
            "{TLS}{UDP}[[listeners]]\nname=\"tcp\"\ntransport=\"tcp\"\naddress=\"127.0.0.1:5060\"\n{}",
            tenant("sip:10.1.1.1;transport=udp")
        );
        let cfg = check(&text).expect("valid");
        let kinds: Vec<Transport> = cfg.listeners.iter().map(|l| l.transport).collect();
        assert_eq!(kinds, [Transport::Tls, Transport::Udp, Transport::Tcp]);
        assert!(cfg.listeners[1].certificate_pem.is_empty());
        assert_eq!(
            cfg.tenants[0].routes[0].targets[0].uri.transport,
            Transport::Udp
        );
        assert!(cfg.summary().contains("transport=udp"));
    }

    #[test]
    fn transport_mistakes_are_refused_naming_the_key() {
        let cases = [
            // A plain listener with TLS settings.
            (
                format!("{UDP}certificate=\"cert.pem\"\n{}", tenant("sips:h")),
                "listeners[0].certificate",
            ),
            (
                format!("{UDP}private_key=\"key.pem\"\n{}", tenant("sips:h")),
                "listeners[0].private_key",
            ),
            (
                format!("{UDP}require_client_cert=true\n{}", tenant("sips:h")),
                "listeners[0].require_client_cert",
            ),
            // A TLS listener without its certificate (the default transport is TLS).
            (
                format!(
                    "[[listeners]]\nname=\"x\"\naddress=\"127.0.0.1:5061\"\nprivate_key=\"key.pem\"\n{}",
                    tenant("sips:h")
                ),
                "listeners[0].certificate",
            ),
            (
                format!(
                    "[[listeners]]\nname=\"x\"\naddress=\"127.0.0.1:5061\"\ncertificate=\"cert.pem\"\n{}",
                    tenant("sips:h")
                ),
                "listeners[0].private_key",
            ),
            (
                format!(
                    "{TLS}[[listeners]]\nname=\"x\"\ntransport=\"quic\"\naddress=\"127.0.0.1:5062\"\n{}",
                    tenant("sips:h")
                ),
                "quic",
            ),
            // TLS and plain TCP on one TCP port clash.
            (
                format!(
                    "{TLS}[[listeners]]\nname=\"x\"\ntransport=\"tcp\"\naddress=\"0.0.0.0:5061\"\n{}",
                    tenant("sips:h")
                ),
                "listeners[1].address",
            ),
            // Two UDP listeners on one port clash.
            (
                format!(
                    "{UDP}[[listeners]]\nname=\"x\"\ntransport=\"udp\"\naddress=\"127.0.0.1:5060\"\n{}",
                    tenant("sips:h")
                ),
                "listeners[1].address",
            ),
            // A UDP target with no UDP listener to send from.
            (
                format!("{TLS}{}", tenant("sip:10.1.1.1;transport=udp")),
                "tenants[0].routes[0].target",
            ),
            // TLS settings on a plain target.
            (
                format!("{TLS}{}ca_file=\"cert.pem\"\n", tenant("sip:10.1.1.1;transport=tcp")),
                "tenants[0].routes[0].ca_file",
            ),
        ];
        for (text, key) in cases {
            match check(&text) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => assert!(e.contains(key), "error {e:?} should name {key:?}"),
            }
        }
        // UDP and TCP listeners may share a port.
        let ok = format!(
            "{UDP}[[listeners]]\nname=\"x\"\ntransport=\"tcp\"\naddress=\"127.0.0.1:5060\"\n{}",
            tenant("sip:10.1.1.1;transport=tcp")
        );
        assert!(check(&ok).is_ok());
    }
}
