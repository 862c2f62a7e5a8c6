//! RFC 3263 resolution of SIP route targets: NAPTR → SRV → A/AAAA, with a bounded,
//! TTL-respecting cache and a deadline per lookup.
//!
//! Owns: turning a target (`sips:trunk.example`, `sip:pbx.example;transport=udp`,
//! `sips:10.0.0.5:5061`) into an ordered list of [`Candidate`]s, every resolved address
//! one candidate, ordered by NAPTR order/preference, then SRV priority with RFC 2782
//! weighted selection; the answer cache ([`cache`]); the bounds against hostile answers
//! (candidates, SRV targets and NAPTR records per target, CNAME chain depth, the
//! deadline); and the `sbc_dns_*` metrics.
//!
//! Must not: open SIP connections or decide which candidate a call uses (the caller tries
//! them in order and falls back on failure), pick the TLS name to verify (RFC 5922 §4: the
//! caller verifies the host of the configured URI, never an SRV target), or touch
//! system-wide resolver state (nameservers come from the config or are read from
//! `/etc/resolv.conf`; nothing is written).
//!
//! A separate crate rather than a module of sbc-sip: it has its own closed error enum
//! ([`DnsError`]), keeps the resolver's dependency tree out of the SIP crate's, and
//! serves every transport (TLS now; UDP and TCP targets and trunk health can take the
//! same [`Resolver::candidates`]).

#![forbid(unsafe_code)]

pub mod cache;
pub mod order;
mod resolver;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use resolver::{Clock, Resolver};

/// URI scheme of a target (RFC 3261 §19.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Sip,
    Sips,
}

/// Transport of a candidate (RFC 3263 §4.1): the gateway's one transport vocabulary.
pub use sbc_core::config::Transport;

/// The parts of a target URI that resolution needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetName {
    pub scheme: Scheme,
    /// Domain name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port given in the URI, if any.
    pub port: Option<u16>,
    /// `transport=` parameter, if any.
    pub transport: Option<Transport>,
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}:[{}]", self.host)?;
        } else {
            write!(f, "{scheme}:{}", self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(t) = self.transport {
            write!(f, ";transport={}", t.as_str())?;
        }
        Ok(())
    }
}

/// One address to try, in the order [`Resolver::candidates`] returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// SRV priority (0 when the address did not come from SRV).
    pub priority: u16,
    /// SRV weight (0 when the address did not come from SRV).
    pub weight: u16,
    /// The SRV target this address came from, if any (for logs; never the TLS name).
    pub srv_target: Option<String>,
}

/// Resolver settings (typed from `sip.dns_servers` and `sip.dns_timeout_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Nameservers asked over UDP (and TCP for truncated answers); empty: the ones in
    /// `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// Longest one [`Resolver::candidates`] may take, every query included.
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout: Duration::from_millis(2000),
        }
    }
}

/// Why a target could not be resolved. The caller falls back to its next target; each
/// variant is one `result` label of `sbc_dns_lookups_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The name does not exist or has no usable records (NXDOMAIN, empty answers, SRV
    /// "." only, no address of a supported transport).
    #[error("no usable records for {0}")]
    NotFound(String),
    /// The deadline (`sip.dns_timeout_ms`) passed before an answer.
    #[error("DNS lookup timed out after {0:?}")]
    Timeout(Duration),
    /// A CNAME chain longer than [`order::MAX_CNAME_CHAIN`], a loop (the resolver stops
    /// after 8 hops), or a chain whose last name holds a CNAME but no record.
    #[error("CNAME chain too long or looping at {0}")]
    CnameChain(String),
    /// The server refused or failed (SERVFAIL, REFUSED, a malformed answer).
    #[error("DNS server failure: {0}")]
    ServerFailure(String),
    /// The host is not a valid domain name.
    #[error("invalid domain name {0:?}")]
    BadName(String),
    /// The URI asks for a transport its scheme forbids (`sips:` with UDP or TCP).
    #[error("{0} cannot use that transport")]
    BadTransport(String),
    /// No nameserver to ask (none configured and none in /etc/resolv.conf).
    #[error("no nameserver: {0}")]
    NoServer(String),
}

impl DnsError {
    /// Label value of `sbc_dns_lookups_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            DnsError::NotFound(_) => "not_found",
            DnsError::Timeout(_) => "timeout",
            DnsError::CnameChain(_) => "cname_chain",
            DnsError::ServerFailure(_) => "server_failure",
            DnsError::BadName(_) => "bad_name",
            DnsError::BadTransport(_) => "bad_transport",
            DnsError::NoServer(_) => "no_server",
        }
    }
}

/// Every `result` label of `sbc_dns_lookups_total` (copied in sbc-core's metrics catalog;
/// a test checks the copy).
pub const LOOKUP_RESULTS: &[&str] = &[
    "ok",
    "not_found",
    "timeout",
    "cname_chain",
    "server_failure",
    "bad_name",
    "bad_transport",
    "no_server",
];

/// Every `what` label of `sbc_dns_answers_capped_total` (copied in sbc-core's catalog).
pub const CAP_LABELS: &[&str] = &["records", "srv_targets", "candidates"];
