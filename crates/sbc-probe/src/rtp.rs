//! RTP packets the probes send (RFC 3550 §5.1) and the stamp their payloads carry.
//!
//! Owns: writing a clear RTP packet, finding its payload, and the probe stamp: a fixed
//! header in the payload that says which stream a packet belongs to, its number, and (in
//! echoes from the demo endpoint) how many packets the echoing side had received and which
//! suite it decrypted them with. Must not: touch sockets, keys or the clock.

use sbc_media::srtp::SrtpProfile;

/// RTP fixed header length without CSRCs (RFC 3550 §5.1).
pub const RTP_HEADER_LEN: usize = 12;

/// Payload bytes per packet: 20 ms of PCMU at 8 kHz (RFC 3551 §4.5.14), what a phone sends.
pub const PAYLOAD_LEN: usize = 160;

/// RTP timestamp step per packet: 20 ms at an 8 kHz clock.
pub const TIMESTAMP_STEP: u32 = 160;

/// Payload type of the probe's packets: PCMU (RFC 3551 §6).
pub const PAYLOAD_TYPE: u8 = 0;

/// Marks a probe payload.
const MAGIC: [u8; 4] = *b"SBCP";

/// Bytes of the stamp at the start of a probe payload.
pub const STAMP_LEN: usize = 16;

/// Suite code for "no suite reported".
const NO_SUITE: u8 = 0xff;

/// The stamp at the start of a probe payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which stream sent the packet (a caller's, a callee's, an echo's).
    pub stream: u8,
    /// Packet number within its stream, from 1.
    pub seq: u32,
    /// In an echo: packets the echoing side had received so far, this one included.
    pub echo_count: u32,
    /// In an echo: the suite the echoing side decrypted with.
    pub suite: Option<SrtpProfile>,
}

fn suite_code(p: Option<SrtpProfile>) -> u8 {
    p.and_then(|p| SrtpProfile::ALL.iter().position(|q| *q == p))
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(NO_SUITE)
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_LEN`] bytes of `payload` (which must be at
    /// least that long; shorter payloads are left alone).
    pub fn write(&self, payload: &mut [u8]) {
        let Some(p) = payload.get_mut(..STAMP_LEN) else {
            return;
        };
        p[..4].copy_from_slice(&MAGIC);
        p[4] = self.stream;
        p[5] = suite_code(self.suite);
        p[6..8].copy_from_slice(&[0, 0]);
        p[8..12].copy_from_slice(&self.seq.to_be_bytes());
        p[12..16].copy_from_slice(&self.echo_count.to_be_bytes());
    }

    /// The stamp of a payload, `None` when it is not a probe payload.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let p = payload.get(..STAMP_LEN)?;
        if p[..4] != MAGIC {
            return None;
        }
        let word = |at: usize| u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
        Some(Stamp {
            stream: p[4],
            suite: SrtpProfile::ALL.get(usize::from(p[5])).copied(),
            seq: word(8),
            echo_count: word(12),
        })
    }
}

/// Appends a clear RTP packet (version 2, no padding, extension or CSRC) to `out`.
pub fn write_packet(out: &mut Vec<u8>, seq: u16, timestamp: u32, ssrc: u32, payload: &[u8]) {
    out.extend_from_slice(&[0x80, PAYLOAD_TYPE]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A clear RTP packet with payload type 0 and timestamp `seq * 160`.
pub fn packet(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RTP_HEADER_LEN + payload.len());
    write_packet(
        &mut out,
        seq,
        u32::from(seq).wrapping_mul(TIMESTAMP_STEP),
        ssrc,
        payload,
    );
    out
}

/// The payload of a clear RTP packet (after CSRCs and a header extension, before
/// padding), `None` when the packet is malformed.
pub fn payload(pkt: &[u8]) -> Option<&[u8]> {
    let first = *pkt.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let mut at = RTP_HEADER_LEN + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let ext = pkt.get(at + 2..at + 4)?;
        at += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = pkt.len();
    if first & 0x20 != 0 {
        let pad = usize::from(*pkt.last()?);
        end = end.checked_sub(pad)?;
    }
    pkt.get(at..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_through_a_packet() {
        let mut body = [0u8; PAYLOAD_LEN];
        let s = Stamp {
            stream: 2,
            seq: 70_000,
            echo_count: 69_999,
            suite: Some(SrtpProfile::AeadAes256Gcm),
        };
        s.write(&mut body);
        let pkt = packet(7, 0x1234, &body);
        assert_eq!(pkt.len(), RTP_HEADER_LEN + PAYLOAD_LEN);
        assert_eq!(&pkt[2..4], &7u16.to_be_bytes());
        assert_eq!(&pkt[4..8], &(7 * TIMESTAMP_STEP).to_be_bytes());
        let got = payload(&pkt).expect("payload");
        assert_eq!(Stamp::read(got), Some(s));
    }

    #[test]
    fn foreign_payloads_and_short_packets_have_no_stamp() {
        assert_eq!(Stamp::read(&[0u8; PAYLOAD_LEN]), None);
        assert_eq!(Stamp::read(b"SBCP"), None);
        assert_eq!(payload(&[0x80, 0]), None);
        assert_eq!(payload(&[0x40; 20]), None, "version 1");
        // CSRC count past the end.
        assert_eq!(payload(&[0x8f; 20]), None);
        let mut none = [0u8; PAYLOAD_LEN];
        Stamp {
            stream: 1,
            seq: 1,
            echo_count: 0,
            suite: None,
        }
        .write(&mut none);
        assert_eq!(Stamp::read(&none).and_then(|s| s.suite), None);
    }

    #[test]
    fn payload_skips_csrcs_extension_and_padding() {
        let mut p = vec![0xb1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension, one word
        p.extend_from_slice(b"abc");
        p.extend_from_slice(&[0, 2]); // two bytes of padding
        assert_eq!(payload(&p), Some(&b"abc"[..]));
    }
}
