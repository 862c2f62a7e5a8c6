//! `[sip]`: bounds on SIP messages and connections, transaction timers, the drain on
//! shutdown, and (through [`dns`](super::dns) and [`certs`]) DNS and certificate polling.
//!
//! Owns: the raw section, its defaults and their reasons, and its validation into
//! [`SipSettings`]. Must not: parse or send SIP (sbc-sip does).

use std::time::Duration;

use serde::Deserialize;

use super::{certs, dns, invalid, ConfigError, DnsSettings};

/// Smallest accepted `sip.max_message_bytes`: an INVITE with a modest SDP needs ~1 KiB.
pub const MIN_MESSAGE_BYTES: usize = 1024;

/// Largest accepted `sip.max_message_bytes`: one message buffer per connection is this big.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// SIP transport and transaction settings.
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// Largest SIP message (headers + body) accepted on a connection.
    pub max_message_bytes: usize,
    /// Most header lines one message may carry.
    pub max_headers: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// RFC 3261 T1; timers B, F and H are 64·T1.
    pub t1: Duration,
    /// Longest an INVITE may ring before it is cancelled (408 upstream).
    pub max_ringing: Duration,
    /// Max-Forwards for requests that arrive without one.
    pub max_forwards: u32,
    /// Longest a stream connection may take from the first byte of a message to its last
    /// (head and body); past it the connection is closed (slowloris).
    pub message_timeout: Duration,
    /// Most connections of one source IP that may hold an incomplete message at once;
    /// the one that would exceed it is closed.
    pub max_partial_connections_per_source: u32,
    /// On SIGTERM, how long running calls may go on before the gateway stops anyway
    /// (`sip.drain_deadline_secs`; 0: stop at once).
    pub drain_deadline: Duration,
    /// How often certificate, key and CA files are read again to pick up a change
    /// (`sip.cert_poll_secs`; `None`: only on SIGHUP). See [`certs`].
    pub cert_poll: Option<Duration>,
    /// Resolution of route targets given by name (`sip.dns_servers`, `sip.dns_timeout_ms`).
    pub dns: DnsSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSip {
    max_message_bytes: usize,
    max_headers: usize,
    idle_timeout_secs: u64,
    t1_ms: u64,
    max_ringing_secs: u64,
    max_forwards: u32,
    message_timeout_ms: u64,
    max_partial_connections_per_source: u32,
    drain_deadline_secs: u64,
    cert_poll_secs: u64,
    dns_timeout_ms: u64,
    dns_servers: Vec<String>,
}

/// Default `sip.message_timeout_ms`. A peer writes a message at once, so it normally
/// arrives within a round trip; TCP's initial retransmission timeout is 1 s (RFC 6298), so
/// three lost segments in a row back off 1 + 2 + 4 = 7 s. 10 s covers that on a bad path
/// and still cuts a peer that dribbles a message (one byte a second) within seconds.
const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 10_000;

/// Default `sip.max_partial_connections_per_source`. A trunk holds a message incomplete
/// for about a round trip, and rarely on more than one or two connections at the same
/// instant; 8 leaves room for that while bounding what one slow source can pin to
/// 8 × `max_message_bytes` (512 KiB at the default) of buffers.
const DEFAULT_MAX_PARTIAL_CONNECTIONS_PER_SOURCE: u32 = 8;

/// Default `sip.drain_deadline_secs`: most calls a drain waits for are short ones in
/// setup or ending; 30 s lets those finish and fits inside systemd's default stop timeout
/// (90 s) with room for the rest of the shutdown.
const DEFAULT_DRAIN_DEADLINE_SECS: u64 = 30;

/// Longest `sip.drain_deadline_secs`: a day, past which a "drain" is an outage of the
/// process manager's stop, not a drain.
const MAX_DRAIN_DEADLINE_SECS: u64 = 86_400;

impl Default for RawSip {
    fn default() -> Self {
        RawSip {
            max_message_bytes: 65536,
            max_headers: 100,
            idle_timeout_secs: 600,
            t1_ms: 500,
            max_ringing_secs: 180,
            max_forwards: 70,
            message_timeout_ms: DEFAULT_MESSAGE_TIMEOUT_MS,
            max_partial_connections_per_source: DEFAULT_MAX_PARTIAL_CONNECTIONS_PER_SOURCE,
            drain_deadline_secs: DEFAULT_DRAIN_DEADLINE_SECS,
            cert_poll_secs: certs::DEFAULT_CERT_POLL_SECS,
            dns_timeout_ms: dns::DEFAULT_DNS_TIMEOUT_MS,
            dns_servers: Vec::new(),
        }
    }
}

pub(super) fn validate_sip(raw: &RawSip) -> Result<SipSettings, ConfigError> {
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&raw.max_message_bytes) {
        return Err(invalid(
            "sip.max_message_bytes",
            format!("must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES}"),
        ));
    }
    if !(10..=1000).contains(&raw.max_headers) {
        return Err(invalid("sip.max_headers", "must be between 10 and 1000"));
    }
    if !(1..=86_400).contains(&raw.idle_timeout_secs) {
        return Err(invalid(
            "sip.idle_timeout_secs",
            "must be between 1 and 86400",
        ));
    }
    if !(1..=10_000).contains(&raw.t1_ms) {
        return Err(invalid("sip.t1_ms", "must be between 1 and 10000"));
    }
    if !(1..=3600).contains(&raw.max_ringing_secs) {
        return Err(invalid(
            "sip.max_ringing_secs",
            "must be between 1 and 3600",
        ));
    }
    if !(1..=255).contains(&raw.max_forwards) {
        return Err(invalid("sip.max_forwards", "must be between 1 and 255"));
    }
    if !(100..=300_000).contains(&raw.message_timeout_ms) {
        return Err(invalid(
            "sip.message_timeout_ms",
            "must be between 100 and 300000",
        ));
    }
    if !(1..=10_000).contains(&raw.max_partial_connections_per_source) {
        return Err(invalid(
            "sip.max_partial_connections_per_source",
            "must be between 1 and 10000",
        ));
    }
    if raw.drain_deadline_secs > MAX_DRAIN_DEADLINE_SECS {
        return Err(invalid(
            "sip.drain_deadline_secs",
            format!("must be between 0 and {MAX_DRAIN_DEADLINE_SECS}"),
        ));
    }
    Ok(SipSettings {
        max_message_bytes: raw.max_message_bytes,
        max_headers: raw.max_headers,
        idle_timeout: Duration::from_secs(raw.idle_timeout_secs),
        t1: Duration::from_millis(raw.t1_ms),
        max_ringing: Duration::from_secs(raw.max_ringing_secs),
        max_forwards: raw.max_forwards,
        message_timeout: Duration::from_millis(raw.message_timeout_ms),
        max_partial_connections_per_source: raw.max_partial_connections_per_source,
        drain_deadline: Duration::from_secs(raw.drain_deadline_secs),
        cert_poll: certs::poll_interval(raw.cert_poll_secs)?,
        dns: dns::validate(raw.dns_timeout_ms, &raw.dns_servers)?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::{err, files, LISTENER, TENANT};
    use crate::config::Config;

    #[test]
    fn drain_deadline_defaults_to_30s_and_is_bounded() {
        let f = files();
        let cfg = Config::from_toml_str(&format!("{LISTENER}{TENANT}"), &f.dir).expect("valid");
        assert_eq!(cfg.sip.drain_deadline, Duration::from_secs(30));
        let text = format!("[sip]\ndrain_deadline_secs = 0\n{LISTENER}{TENANT}");
        let cfg = Config::from_toml_str(&text, &f.dir).expect("valid");
        assert_eq!(cfg.sip.drain_deadline, Duration::ZERO);
        let e = err(
            &f,
            &format!("[sip]\ndrain_deadline_secs = 86401\n{LISTENER}{TENANT}"),
        );
        assert!(e.contains("sip.drain_deadline_secs"), "{e}");
    }
}
