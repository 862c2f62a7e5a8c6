//! sbc-media: SRTP/SRTCP, and (later) SDP rewriting, port pool and relay workers.
//! Never parses SIP.
#![forbid(unsafe_code)]

pub mod engine;
pub mod ports;
pub mod relay;
pub mod sdp;
pub mod srtp;
