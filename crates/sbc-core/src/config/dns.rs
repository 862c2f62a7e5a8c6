//! `sip.dns_servers` and `sip.dns_timeout_ms`: where and how long route targets given by
//! domain name are resolved (RFC 3263, see the `sbc-dns` crate).
//!
//! Owns: validating those keys into [`DnsSettings`]. Must not: resolve anything.

use std::net::SocketAddr;
use std::time::Duration;

use super::{invalid, ConfigError};

/// Default `sip.dns_timeout_ms`: a resolver on the LAN answers in milliseconds and a
/// recursive lookup of a cold name in a few hundred; 2 s covers that with a lost UDP
/// packet, and a call whose target cannot be resolved falls back to its next target
/// within 2 s instead of ringing into nothing.
pub const DEFAULT_DNS_TIMEOUT_MS: u64 = 2000;

/// Shortest `sip.dns_timeout_ms`: under 100 ms even a LAN resolver misses cold names.
pub const MIN_DNS_TIMEOUT_MS: u64 = 100;

/// Longest `sip.dns_timeout_ms`: 30 s, about timer B at the default T1 (32 s), past which
/// the INVITE transaction has failed anyway.
pub const MAX_DNS_TIMEOUT_MS: u64 = 30_000;

/// Most `sip.dns_servers`: resolv.conf itself allows 3; a few more for operators who list
/// both families, and a bound on what one lookup may fan out to.
pub const MAX_DNS_SERVERS: usize = 8;

/// The resolver's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Nameservers (`ip:port`); empty: those of /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// Longest one target's resolution may take, every query included.
    pub timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            timeout: Duration::from_millis(DEFAULT_DNS_TIMEOUT_MS),
        }
    }
}

/// Validate the raw keys. A server is `ip:port` or a bare IP (port 53).
pub(super) fn validate(timeout_ms: u64, servers: &[String]) -> Result<DnsSettings, ConfigError> {
    if !(MIN_DNS_TIMEOUT_MS..=MAX_DNS_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(invalid(
            "sip.dns_timeout_ms",
            format!("must be between {MIN_DNS_TIMEOUT_MS} and {MAX_DNS_TIMEOUT_MS}"),
        ));
    }
    if servers.len() > MAX_DNS_SERVERS {
        return Err(invalid(
            "sip.dns_servers",
            format!("at most {MAX_DNS_SERVERS} servers"),
        ));
    }
    let mut out = Vec::with_capacity(servers.len());
    for (i, s) in servers.iter().enumerate() {
        let addr = match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => match s.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, 53),
                Err(_) => {
                    return Err(invalid(
                        format!("sip.dns_servers[{i}]"),
                        format!("{s:?} is not an IP address or ip:port"),
                    ))
                }
            },
        };
        if addr.port() == 0 {
            return Err(invalid(format!("sip.dns_servers[{i}]"), "port 0"));
        }
        out.push(addr);
    }
    Ok(DnsSettings {
        servers: out,
        timeout: Duration::from_millis(timeout_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_timeout() {
        let s = validate(1500, &["127.0.0.1:5353".into(), "::1".into()]).expect("valid");
        assert_eq!(
            s.servers,
            vec![
                "127.0.0.1:5353".parse::<SocketAddr>().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ]
        );
        assert_eq!(s.timeout, Duration::from_millis(1500));
        assert_eq!(
            validate(DEFAULT_DNS_TIMEOUT_MS, &[]).expect("valid"),
            DnsSettings::default()
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |r: Result<DnsSettings, ConfigError>| match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(validate(50, &[])), "sip.dns_timeout_ms");
        assert_eq!(key(validate(60_000, &[])), "sip.dns_timeout_ms");
        assert_eq!(
            key(validate(2000, &["ok.example".into()])),
            "sip.dns_servers[0]"
        );
        assert_eq!(
            key(validate(2000, &["1.1.1.1".into(), "1.1.1.1:0".into()])),
            "sip.dns_servers[1]"
        );
        assert_eq!(
            key(validate(2000, &vec!["1.1.1.1".to_string(); 9])),
            "sip.dns_servers"
        );
    }
}
