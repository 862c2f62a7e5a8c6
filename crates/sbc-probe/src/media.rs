//! One SRTP media leg of a probe: a UDP socket, the key it sends with and the key it
//! receives with, and its counters.
//!
//! Owns: protecting and sending probe packets (20 ms of PCMU each, stamped, see
//! [`crate::rtp`]), receiving and unprotecting with sbc-media's SRTP contexts, and
//! counting what was sent, received, refused and foreign. Must not: pace (callers hold the
//! 20 ms clock), log keys, or wait without a deadline.

use std::net::SocketAddr;

use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::rtp::{self, Stamp, PAYLOAD_LEN, RTP_HEADER_LEN, TIMESTAMP_STEP};
use crate::ProbeError;

/// Room after a packet for the SRTP tag and an MKI: more than the longest tag (16 bytes).
const SRTP_TAILROOM: usize = 64;

/// Largest datagram a leg reads: an MTU-sized packet with room to spare.
const MAX_DATAGRAM: usize = 2048;

/// Marks an echoed stream in the stamp (`stream | ECHO`).
pub const ECHO: u8 = 0x80;

/// What a leg counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegStats {
    /// Packets sent.
    pub sent: u32,
    /// Authenticated packets of the expected stream.
    pub received: u32,
    /// Packets that did not authenticate (wrong key, replayed, not SRTP).
    pub refused: u32,
    /// Authenticated packets of another stream, or without a probe stamp.
    pub foreign: u32,
    /// The highest echo count seen: how many packets the echoing side had received.
    pub echo_count: u32,
    /// The suite the echoing side reported.
    pub echo_suite: Option<SrtpProfile>,
}

/// What one received datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// An authenticated probe packet.
    Probe { from: SocketAddr, stamp: Stamp },
    /// An authenticated packet without a probe stamp, or of a stream not expected.
    Foreign { from: SocketAddr },
    /// A packet that did not authenticate.
    Refused,
}

/// One leg.
#[derive(Debug)]
pub struct Leg {
    sock: UdpSocket,
    tx: SrtpContext,
    rx: SrtpContext,
    rx_profile: SrtpProfile,
    remote: SocketAddr,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    stream: u8,
    expect: Option<u8>,
    buf: Vec<u8>,
    clear_len: usize,
    pub stats: LegStats,
}

fn context(profile: SrtpProfile, key: &MasterKey) -> Result<SrtpContext, ProbeError> {
    SrtpContext::new(profile, key, SrtpConfig::default())
        .map_err(|e| ProbeError::BadInput(format!("SRTP {}: {e}", profile.as_str())))
}

impl Leg {
    /// A leg on `sock` sending stream `stream` to `remote` with `send`, receiving with
    /// `recv` and counting packets of stream `expect` (any stream when `None`).
    pub fn new(
        sock: UdpSocket,
        send: (SrtpProfile, &MasterKey),
        recv: (SrtpProfile, &MasterKey),
        remote: SocketAddr,
        stream: u8,
        expect: Option<u8>,
    ) -> Result<Leg, ProbeError> {
        Ok(Leg {
            sock,
            tx: context(send.0, send.1)?,
            rx: context(recv.0, recv.1)?,
            rx_profile: recv.0,
            remote,
            ssrc: rand::random(),
            seq: rand::random::<u16>() & 0x7fff,
            timestamp: rand::random(),
            stream,
            expect,
            buf: vec![0; MAX_DATAGRAM],
            clear_len: 0,
            stats: LegStats::default(),
        })
    }

    /// Binds a UDP socket on `addr` (port 0: any free port).
    pub async fn bind(addr: SocketAddr) -> Result<UdpSocket, ProbeError> {
        UdpSocket::bind(addr)
            .await
            .map_err(|e| ProbeError::io(format!("UDP bind {addr}"), e))
    }

    /// From now on send stream `stream` and count stream `expect`; the counters restart
    /// (the SRTP contexts, sequence numbers and socket do not).
    pub fn set_streams(&mut self, stream: u8, expect: Option<u8>) {
        self.stream = stream;
        self.expect = expect;
        self.stats = LegStats::default();
    }

    /// The RTP sequence number of the next packet sent (a test starting a stream just
    /// before a wrap, RFC 3711 §3.3.1).
    pub fn set_next_seq(&mut self, seq: u16) {
        self.seq = seq;
    }

    /// From now on decrypt with `recv` (a new key in an SDES re-offer or re-answer) and
    /// send to `remote`; the sending context is kept. Each SSRC's packet index (rollover
    /// counter and highest sequence) carries over to the new key, as libsrtp's
    /// `srtp_update_stream` does: the sender's stream goes on, only its key changed.
    pub fn rekey_rx(
        &mut self,
        recv: (SrtpProfile, &MasterKey),
        remote: SocketAddr,
    ) -> Result<(), ProbeError> {
        let mut progress = Vec::new();
        self.rx.rx_progress(&mut progress);
        let mut rx = context(recv.0, recv.1)?;
        for p in progress {
            rx.restore_ssrc(false, p.ssrc, p.roc, p.seq)
                .map_err(|e| ProbeError::BadInput(format!("SRTP re-key: {e}")))?;
        }
        self.rx = rx;
        self.rx_profile = recv.0;
        self.remote = remote;
        Ok(())
    }

    /// The suite this leg decrypts with.
    pub fn recv_profile(&self) -> SrtpProfile {
        self.rx_profile
    }

    /// Where packets go.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Sends the next packet of this leg's stream.
    pub async fn send_next(&mut self) -> Result<(), ProbeError> {
        let mut payload = [0u8; PAYLOAD_LEN];
        Stamp {
            stream: self.stream,
            seq: self.stats.sent + 1,
            echo_count: 0,
            suite: None,
        }
        .write(&mut payload);
        self.send_payload(&payload, self.remote).await
    }

    /// Protects and sends a packet carrying `payload` to `to`.
    pub async fn send_payload(&mut self, payload: &[u8], to: SocketAddr) -> Result<(), ProbeError> {
        let mut pkt = Vec::with_capacity(RTP_HEADER_LEN + payload.len() + SRTP_TAILROOM);
        rtp::write_packet(&mut pkt, self.seq, self.timestamp, self.ssrc, payload);
        let len = pkt.len();
        pkt.resize(len + SRTP_TAILROOM, 0);
        let n = self
            .tx
            .protect_rtp(&mut pkt, len)
            .map_err(|e| ProbeError::BadInput(format!("SRTP protect: {e}")))?;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(TIMESTAMP_STEP);
        // A send refused by the kernel (no route, buffer full) is a lost packet, counted
        // by the far side; only a socket that cannot send at all is an error.
        match self.sock.send_to(&pkt[..n], to).await {
            Ok(_) => {
                self.stats.sent += 1;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(ProbeError::io(format!("UDP send to {to}"), e)),
        }
    }

    /// The clear payload of the last packet [`Leg::recv`] returned.
    pub fn last_payload(&self) -> &[u8] {
        rtp::payload(&self.buf[..self.clear_len]).unwrap_or(&[])
    }

    /// The next datagram, unprotected and counted; `Ok(None)` at `deadline`.
    pub async fn recv(&mut self, deadline: Instant) -> Result<Option<Got>, ProbeError> {
        self.buf.resize(MAX_DATAGRAM, 0);
        let (n, from) =
            match tokio::time::timeout_at(deadline, self.sock.recv_from(&mut self.buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(v)) => v,
                // ICMP port unreachable from an earlier send (Linux reports it on the next
                // receive): the far side is not there yet, not an error of ours.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Ok(Some(Got::Refused));
                }
                Ok(Err(e)) => return Err(ProbeError::io("UDP receive", e)),
            };
        let Ok(clear) = self.rx.unprotect_rtp(&mut self.buf[..n]) else {
            self.clear_len = 0;
            self.stats.refused += 1;
            return Ok(Some(Got::Refused));
        };
        self.clear_len = clear;
        let stamp = Stamp::read(self.last_payload());
        let wanted = match (stamp, self.expect) {
            (Some(s), Some(e)) => s.stream == e,
            (Some(_), None) => true,
            (None, _) => false,
        };
        match stamp {
            Some(s) if wanted => {
                self.stats.received += 1;
                if s.echo_count > self.stats.echo_count {
                    self.stats.echo_count = s.echo_count;
                }
                if s.suite.is_some() {
                    self.stats.echo_suite = s.suite;
                }
                Ok(Some(Got::Probe { from, stamp: s }))
            }
            _ => {
                self.stats.foreign += 1;
                Ok(Some(Got::Foreign { from }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdes::random_key;
    use std::time::Duration;

    #[tokio::test]
    async fn two_legs_exchange_and_count_and_refuse_a_wrong_key() {
        let p = SrtpProfile::AesCm128HmacSha1_80;
        let (ka, kb) = (random_key(p), random_key(p));
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let sa = Leg::bind(lo).await.expect("bind");
        let sb = Leg::bind(lo).await.expect("bind");
        let (aa, ab) = (sa.local_addr().expect("a"), sb.local_addr().expect("b"));
        let mut a = Leg::new(sa, (p, &ka), (p, &kb), ab, 1, Some(2)).expect("a");
        let mut b = Leg::new(sb, (p, &kb), (p, &ka), aa, 2, Some(1)).expect("b");
        let wait = || Instant::now() + Duration::from_secs(2);
        for _ in 0..3 {
            a.send_next().await.expect("send");
            let got = b.recv(wait()).await.expect("recv").expect("packet");
            assert!(matches!(got, Got::Probe { stamp, .. } if stamp.stream == 1));
        }
        assert_eq!((a.stats.sent, b.stats.received), (3, 3));
        b.send_next().await.expect("send");
        assert!(matches!(
            a.recv(wait()).await.expect("recv"),
            Some(Got::Probe { .. })
        ));
        // A third party with another key: refused, not counted.
        let mut c = Leg::new(
            Leg::bind(lo).await.expect("bind"),
            (p, &random_key(p)),
            (p, &kb),
            ab,
            1,
            None,
        )
        .expect("c");
        c.send_next().await.expect("send");
        assert_eq!(b.recv(wait()).await.expect("recv"), Some(Got::Refused));
        assert_eq!((b.stats.received, b.stats.refused), (3, 1));
        assert_eq!(
            b.recv(Instant::now() + Duration::from_millis(30))
                .await
                .expect("recv"),
            None
        );
    }
}
