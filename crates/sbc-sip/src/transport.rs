//! Transport rules that are pure decisions on a message (RFC 3261 §18), sans-IO.
//!
//! Owns: which transport a message names in its top Via, rewriting it, the §18.1.1 size
//! rule (a request over 1300 bytes meant for UDP goes over TCP), the datagram bound of a
//! UDP listener, and the closed set of reasons a datagram is dropped.
//! Must not: touch sockets (the server does) or decide routing.

pub use sbc_core::config::Transport;

use crate::message::{parse_via, SipMessage};

/// RFC 3261 §18.1.1: a request larger than this (1300 bytes, for a path MTU of 1500
/// less headroom for IP/UDP headers and tunnels) that would go over UDP goes over a
/// congestion-controlled transport (TCP) instead.
pub const UDP_REQUEST_LIMIT: usize = 1300;

/// Largest UDP payload (65,535 less the IPv4 and UDP headers rounds down to 65,507; a
/// buffer of 65,535 holds any datagram the kernel can hand us).
pub const MAX_DATAGRAM: usize = 65_535;

/// The receive buffer of a UDP listener: `sip.max_message_bytes`, capped at the largest
/// datagram. A larger datagram is truncated by the kernel and dropped as oversized.
pub fn datagram_bound(max_message_bytes: usize) -> usize {
    max_message_bytes.min(MAX_DATAGRAM)
}

/// True if a request of `len` bytes meant for UDP must go over TCP (RFC 3261 §18.1.1).
pub fn needs_stream(len: usize) -> bool {
    len > UDP_REQUEST_LIMIT
}

/// The transport named by the top Via of `msg` (`None`: no Via, or one we do not speak).
pub fn via_transport(msg: &SipMessage) -> Option<Transport> {
    let via = msg.header("via").and_then(parse_via)?;
    Transport::from_via_token(via.transport)
}

/// Rewrite the transport of the top Via of `msg` (§18.1.1: "if the transport is changed,
/// the Via is updated"). The sent-by and parameters are kept.
pub fn set_via_transport(msg: &mut SipMessage, to: Transport) {
    let mut values: Vec<String> = msg.header_values("via").map(str::to_string).collect();
    let Some(top) = values.first_mut() else {
        return;
    };
    let Some(via) = parse_via(top) else {
        return;
    };
    *top = format!("SIP/2.0/{} {}{}", to.via_token(), via.sent_by, via.params);
    let joined = values.join(", ");
    msg.set_header("Via", joined);
}

/// The size rule applied to a request for a UDP target: if it is too large, its Via
/// says TCP from now on. Returns the transport it goes over.
pub fn apply_size_rule(msg: &mut SipMessage) -> Option<Transport> {
    let named = via_transport(msg)?;
    if named == Transport::Udp && msg.is_request() && needs_stream(msg.to_bytes().len()) {
        set_via_transport(msg, Transport::Tcp);
        return Some(Transport::Tcp);
    }
    Some(named)
}

/// Why a UDP datagram was dropped (the `reason` label of `sbc_sip_udp_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// Not a SIP message (and not a keep-alive).
    NotSip,
    /// Parseable enough to answer, but the answer would be larger than the datagram
    /// (no amplification towards a spoofable source).
    AnswerTooLarge,
    /// Larger than the datagram bound.
    Oversized,
    /// The queue into the SIP core was full.
    QueueFull,
    /// The table of UDP sources is full.
    SourceTableFull,
    /// The source is blocked by the flood guard, or over its request rate.
    Flood,
}

impl UdpDrop {
    /// Every reason, for tests and metric pre-registration.
    pub const ALL: [UdpDrop; 6] = [
        UdpDrop::NotSip,
        UdpDrop::AnswerTooLarge,
        UdpDrop::Oversized,
        UdpDrop::QueueFull,
        UdpDrop::SourceTableFull,
        UdpDrop::Flood,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            UdpDrop::NotSip => "not_sip",
            UdpDrop::AnswerTooLarge => "answer_too_large",
            UdpDrop::Oversized => "oversized",
            UdpDrop::QueueFull => "queue_full",
            UdpDrop::SourceTableFull => "source_table_full",
            UdpDrop::Flood => "flood",
        }
    }
}

/// An answer to a datagram may go out only if it is no larger than the datagram (a
/// forged source must not turn us into an amplifier).
pub fn answer_allowed(request_len: usize, answer_len: usize) -> bool {
    answer_len <= request_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Method;

    fn request(body: usize) -> SipMessage {
        let mut m = SipMessage::new_request(Method::Invite, "sip:+1555@10.0.0.9:5060");
        m.push_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc");
        m.push_header("From", "<sip:a@x>;tag=1");
        m.push_header("To", "<sip:b@y>");
        m.push_header("Call-ID", "c1");
        m.push_header("CSeq", "1 INVITE");
        m.set_body(vec![b'x'; body]);
        m
    }

    #[test]
    fn size_rule_switches_large_udp_requests_to_tcp() {
        assert!(!needs_stream(1300));
        assert!(needs_stream(1301));
        let mut small = request(100);
        assert_eq!(apply_size_rule(&mut small), Some(Transport::Udp));
        assert_eq!(via_transport(&small), Some(Transport::Udp));

        let mut big = request(1300);
        let before = big.to_bytes().len();
        assert_eq!(apply_size_rule(&mut big), Some(Transport::Tcp));
        assert_eq!(via_transport(&big), Some(Transport::Tcp));
        let via = big.header("via").unwrap_or_default().to_string();
        assert_eq!(via, "SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKabc");
        assert_eq!(big.to_bytes().len(), before, "only the token changed");

        // A request just at the limit stays on UDP.
        let fill = (0..UDP_REQUEST_LIMIT)
            .find(|n| request(*n).to_bytes().len() == UDP_REQUEST_LIMIT)
            .unwrap_or(0);
        let mut edge = request(fill);
        assert_eq!(edge.to_bytes().len(), UDP_REQUEST_LIMIT);
        assert_eq!(apply_size_rule(&mut edge), Some(Transport::Udp));

        // TLS and TCP requests are never touched.
        let mut tls = request(5000);
        set_via_transport(&mut tls, Transport::Tls);
        assert_eq!(apply_size_rule(&mut tls), Some(Transport::Tls));
    }

    #[test]
    fn via_rewrite_keeps_lower_values() {
        let mut m = request(0);
        m.set_header(
            "Via",
            "SIP/2.0/UDP a:1;branch=z9hG4bK1, SIP/2.0/TLS b:2;branch=z9hG4bK2",
        );
        set_via_transport(&mut m, Transport::Tcp);
        assert_eq!(
            m.header_values("via").collect::<Vec<_>>(),
            [
                "SIP/2.0/TCP a:1;branch=z9hG4bK1",
                "SIP/2.0/TLS b:2;branch=z9hG4bK2"
            ]
        );
    }

    #[test]
    fn datagram_bound_and_amplification_rule() {
        assert_eq!(datagram_bound(4096), 4096);
        assert_eq!(datagram_bound(1 << 20), 65_535);
        assert!(answer_allowed(300, 300));
        assert!(!answer_allowed(300, 301));
        let labels: std::collections::HashSet<&str> =
            UdpDrop::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(labels.len(), UdpDrop::ALL.len());
        let catalog: std::collections::HashSet<&str> = sbc_core::metrics_catalog::UDP_DROPS
            .iter()
            .copied()
            .collect();
        assert_eq!(labels, catalog, "the metrics catalog's copy of UdpDrop");
    }
}
