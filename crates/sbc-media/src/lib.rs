//! sbc-media: SRTP/SRTCP, SDP rewriting, the port pool and the relay workers.
//! Never parses SIP.
//!
//! No `unsafe` except in [`udp_batch`], the commented recvmmsg/sendmmsg module.
#![deny(unsafe_code)]

pub mod engine;
pub mod ports;
pub mod relay;
pub mod replica;
pub mod sdp;
pub mod srtp;
pub mod udp_batch;
