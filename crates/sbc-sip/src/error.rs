//! The crate's error type: what can stop the SIP side from starting.

use std::net::SocketAddr;

/// Errors of sbc-sip set-up. Per-message problems are not errors: they become SIP
/// responses, counters and log lines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    /// TLS material unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The configuration cannot be served (e.g. a route target with no usable name).
    #[error("config: {0}")]
    Config(String),
}
