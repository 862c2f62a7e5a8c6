//! sbc-sip: SIP message parsing and building, TLS, TCP and UDP transports, transactions, B2BUA dialogs,
//! routing and topology hiding. Never touches UDP media or SRTP.
#![forbid(unsafe_code)]

pub mod b2bua;
pub mod error;
pub mod framing;
pub mod health;
pub mod message;
pub mod routing;
pub mod server;
pub mod siprec;
mod targets;
pub mod tls;
pub mod transaction;
pub mod transport;

pub use error::SipError;
