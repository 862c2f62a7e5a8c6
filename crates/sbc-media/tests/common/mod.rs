//! Helpers shared by the engine tests: an engine on a port range, peer sockets, RTP
//! packets and SRTP contexts.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::UdpSocket;
use std::time::Duration;

use base64::Engine as _;
use sbc_media::engine::{MediaEngine, MediaSettings};
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};

/// How long a test waits for a packet.
pub const WAIT: Duration = Duration::from_secs(2);

pub fn engine(port_min: u16, port_max: u16, timeout: Duration) -> MediaEngine {
    let lo = "127.0.0.1".parse().unwrap();
    let mut s = MediaSettings::new(lo, lo, port_min, port_max);
    s.media_timeout = timeout;
    s.workers = 2;
    MediaEngine::start(s).unwrap()
}

pub fn b64(key: &MasterKey) -> String {
    let mut v = key.key.clone();
    v.extend_from_slice(&key.salt);
    base64::engine::general_purpose::STANDARD.encode(v)
}

pub fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

pub fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn ctx(profile: SrtpProfile, k: &MasterKey) -> SrtpContext {
    SrtpContext::new(profile, k, SrtpConfig::default()).unwrap()
}
