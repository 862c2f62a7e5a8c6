//! sbc-media: SRTP/SRTCP, and (later) SDP rewriting, port pool and relay workers.
//! Never parses SIP.
#![forbid(unsafe_code)]

pub mod srtp;
