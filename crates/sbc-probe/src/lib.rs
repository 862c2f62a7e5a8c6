//! sbc-edge's probes: what an operator uses to see a call go through a gateway.
//!
//! Owns: the demo answering endpoint ([`endpoint`], **demo only**: a SIP-over-TLS UAS that
//! answers every INVITE and echoes SRTP), the call client behind `sbc-edge call`
//! ([`client`]), the two-leg SRTP media checker behind `sbc-edge media-check` ([`check`],
//! used by the sipp interop run), and the embedded default's demo files ([`demo`]: a CA
//! made at start, the state file `call` reads, the operator token). The pieces they share:
//! RTP packets and the probe stamp in their payloads ([`rtp`]), SDES offers and answers
//! ([`sdes`], on sbc-media's SDP parser and SRTP contexts), SIP over a byte stream
//! ([`conn`], on sbc-sip's framing and messages), media legs ([`media`]) and TLS
//! configurations ([`tls`]).
//!
//! Must not: be used on a gateway's own call path (nothing in sbc-sip or sbc-media
//! depends on it), log SRTP keys or the operator token, or wait without a bound.
#![forbid(unsafe_code)]

pub mod check;
pub mod client;
pub mod conn;
pub mod demo;
pub mod endpoint;
pub mod failover;
pub mod media;
pub mod rtp;
pub mod sdes;
pub mod tls;

use std::time::Duration;

/// Everything that can go wrong in a probe; each says which side caused it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// A local socket, file or directory could not be used.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Nothing came within a bound.
    #[error("{what}: nothing within {}s", .after.as_secs_f32())]
    Timeout { what: &'static str, after: Duration },
    /// The peer closed the connection.
    #[error("the peer closed the connection while waiting for {0}")]
    Closed(&'static str),
    /// The peer sent something that is not SIP we can use.
    #[error("bad SIP from the peer: {0}")]
    Sip(String),
    /// The call was refused with a final response.
    #[error("the call was refused: {status} {reason}")]
    Refused { status: u16, reason: String },
    /// An SDP body could not be used (no audio, no usable crypto line, ...).
    #[error("SDP: {0}")]
    Sdp(String),
    /// A key or suite given on the command line or in a file is not usable.
    #[error("{0}")]
    BadInput(String),
    /// The demo state (written by a running embedded default) is missing or unusable.
    #[error("{0}")]
    Demo(String),
}

impl ProbeError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> ProbeError {
        ProbeError::Io {
            what: what.into(),
            source,
        }
    }
}
