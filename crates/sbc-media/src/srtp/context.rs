//! One SRTP/SRTCP crypto context: session keys for one master key plus per-SSRC state.
//!
//! Sans-IO: bytes in, bytes out, no clock, no sockets. Packets are transformed in place
//! in the caller's buffer; nothing is allocated per packet (a test with a counting
//! allocator keeps it so). Per-SSRC state is created on the receive side only after a
//! packet from that SSRC authenticated, and the number of SSRCs is bounded.

use std::fmt;

use super::crypto::SessionCrypto;
use super::key::{Kdf, MasterKey};
use super::replay::{ReplayWindow, DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW};
use super::{SrtpError, SrtpProfile};

/// Longest MKI we accept. RFC 4568 §6.1 allows 1..=128 bytes; real deployments use 1-4.
pub const MAX_MKI_LEN: usize = 128;

/// Default bound on SSRCs per direction of a context: a call leg carries one audio and
/// one video SSRC plus RTX/FEC and a few after SSRC changes; 16 leaves room for that
/// without letting a peer grow state without limit.
pub const DEFAULT_MAX_SSRCS: usize = 16;

/// Hard ceiling for [`SrtpConfig::with_max_ssrcs`]: per-SSRC state is ~300 bytes and
/// lookup is a linear scan, so larger tables belong to a different design.
pub const MAX_SSRCS_LIMIT: usize = 1024;

/// Largest SRTCP index (31 bits, RFC 3711 §3.4).
const MAX_SRTCP_INDEX: u32 = 0x7fff_ffff;

/// Largest SRTP packet index (48 bits, RFC 3711 §3.3.1).
const MAX_SRTP_INDEX: u64 = (1 << 48) - 1;

const RTP_HEADER_LEN: usize = 12;
const RTCP_HEADER_LEN: usize = 8;
const SRTCP_INDEX_LEN: usize = 4;
const SRTCP_E_FLAG: u32 = 0x8000_0000;

/// Master Key Identifier carried in every packet of a context (RFC 3711 §3.1).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mki {
    bytes: [u8; MAX_MKI_LEN],
    len: u8,
}

impl Mki {
    /// An MKI of 1..=[`MAX_MKI_LEN`] bytes.
    pub fn new(value: &[u8]) -> Result<Self, SrtpError> {
        if value.is_empty() || value.len() > MAX_MKI_LEN {
            return Err(SrtpError::InvalidConfig("MKI length must be 1..=128"));
        }
        let mut bytes = [0u8; MAX_MKI_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Ok(Mki {
            bytes,
            // Bounded by MAX_MKI_LEN (128) above.
            len: value.len() as u8,
        })
    }

    /// The MKI bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for Mki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mki(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Knobs of an [`SrtpContext`]. Defaults: 128-packet replay window, 16 SSRCs, no MKI.
#[derive(Debug, Clone)]
pub struct SrtpConfig {
    replay_window: usize,
    max_ssrcs: usize,
    mki: Option<Mki>,
}

impl Default for SrtpConfig {
    fn default() -> Self {
        SrtpConfig {
            replay_window: DEFAULT_REPLAY_WINDOW,
            max_ssrcs: DEFAULT_MAX_SSRCS,
            mki: None,
        }
    }
}

impl SrtpConfig {
    /// Replay window in packets, 1..=[`MAX_REPLAY_WINDOW`] (validated by
    /// [`SrtpContext::new`]).
    pub fn with_replay_window(mut self, packets: usize) -> Self {
        self.replay_window = packets;
        self
    }

    /// Bound on SSRCs per direction, 1..=[`MAX_SSRCS_LIMIT`].
    pub fn with_max_ssrcs(mut self, n: usize) -> Self {
        self.max_ssrcs = n;
        self
    }

    /// Sends this MKI and requires it on received packets.
    pub fn with_mki(mut self, mki: Mki) -> Self {
        self.mki = Some(mki);
        self
    }

    /// Replay window in packets.
    pub fn replay_window(&self) -> usize {
        self.replay_window
    }

    /// Bound on SSRCs per direction.
    pub fn max_ssrcs(&self) -> usize {
        self.max_ssrcs
    }

    /// The configured MKI.
    pub fn mki(&self) -> Option<&Mki> {
        self.mki.as_ref()
    }

    fn validate(&self) -> Result<(), SrtpError> {
        if self.replay_window == 0 || self.replay_window > MAX_REPLAY_WINDOW {
            return Err(SrtpError::InvalidConfig(
                "replay window must be 1..=1024 packets",
            ));
        }
        if self.max_ssrcs == 0 || self.max_ssrcs > MAX_SSRCS_LIMIT {
            return Err(SrtpError::InvalidConfig("max_ssrcs must be 1..=1024"));
        }
        Ok(())
    }

    fn mki_len(&self) -> usize {
        self.mki.as_ref().map_or(0, |m| m.len as usize)
    }
}

/// Per-SSRC state for one direction.
#[derive(Clone)]
struct Stream {
    ssrc: u32,
    /// Highest SRTP index (ROC << 16 | SEQ) and the replay bitmap below it.
    rtp: ReplayWindow,
    /// Receive: highest SRTCP index and bitmap. Send: unused.
    rtcp: ReplayWindow,
    /// Send: next SRTCP index to use.
    next_srtcp_index: u32,
    /// Restored from a replicated index ([`SrtpContext::restore_ssrc`]) and no packet
    /// since: the next index is estimated forward from the stored one (see
    /// [`estimate_forward`]). One flag test per packet.
    restored: bool,
}

impl Stream {
    fn new(ssrc: u32) -> Self {
        Stream {
            ssrc,
            rtp: ReplayWindow::new(),
            rtcp: ReplayWindow::new(),
            // libsrtp and webrtc-srtp send index 1 first; matching them keeps our
            // output byte-identical to theirs.
            next_srtcp_index: 1,
            restored: false,
        }
    }
}

/// Bounded SSRC table, grown one entry at a time as SSRCs appear (never past `max`).
///
/// Not reserved up front: a call's four contexts hold eight tables, and sixteen 296-byte
/// entries each made 37 of the 54 KiB of heap per established call (heaptrack at 1,000
/// calls, `benches/README.md` "Where a call's memory goes"), while a call normally uses one
/// SSRC per direction. The cost is one allocation when a new SSRC is admitted (after its
/// first packet authenticated, for receive), bounded by `max` per table; packets of known
/// SSRCs still allocate nothing (`tests/srtp_no_alloc.rs`, `tests/media_no_alloc.rs`).
struct Streams {
    entries: Vec<Stream>,
    max: usize,
}

impl Streams {
    fn new(max: usize) -> Self {
        Streams {
            entries: Vec::new(),
            max,
        }
    }

    fn position(&self, ssrc: u32) -> Option<usize> {
        self.entries.iter().position(|s| s.ssrc == ssrc)
    }

    fn has_room(&self) -> bool {
        self.entries.len() < self.max
    }

    /// Index of the stream for `ssrc`, creating it if there is room.
    fn get_or_insert(&mut self, ssrc: u32) -> Result<usize, SrtpError> {
        if let Some(i) = self.position(ssrc) {
            return Ok(i);
        }
        if !self.has_room() {
            return Err(SrtpError::TooManySsrcs);
        }
        // Exactly one more slot: the table stays as small as the SSRCs in use.
        self.entries.reserve_exact(1);
        self.entries.push(Stream::new(ssrc));
        Ok(self.entries.len() - 1)
    }

    fn remove(&mut self, ssrc: u32) -> bool {
        match self.position(ssrc) {
            Some(i) => {
                self.entries.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// Estimates the 48-bit SRTP index of `seq` given the highest index seen (RFC 3711
/// §3.3.1 and Appendix A). Returns (ROC guess, index).
fn estimate_index(highest: Option<u64>, seq: u16) -> Result<(u32, u64), SrtpError> {
    let Some(highest) = highest else {
        return Ok((0, u64::from(seq)));
    };
    // highest <= MAX_SRTP_INDEX, so the ROC fits in 32 bits.
    let roc = (highest >> 16) as u32;
    let s_l = highest as u16;
    let v = if s_l < 0x8000 {
        if u32::from(seq) > u32::from(s_l) + 0x8000 {
            // A late packet from before the last wrap; with ROC 0 there is no such index.
            roc.checked_sub(1).ok_or(SrtpError::Replayed)?
        } else {
            roc
        }
    } else if u32::from(s_l) - 0x8000 > u32::from(seq) {
        roc.checked_add(1).ok_or(SrtpError::KeyExhausted)?
    } else {
        roc
    };
    let index = (u64::from(v) << 16) | u64::from(seq);
    if index > MAX_SRTP_INDEX {
        return Err(SrtpError::KeyExhausted);
    }
    Ok((v, index))
}

/// The index of `seq` on a stream restored at index `stored` (hot standby, issue #16): the
/// first index at or after `stored` whose low 16 bits are `seq`. The replicated index is
/// a lower bound of the stream's progress and is rewritten at least once per half cycle
/// (when the sequence passes 0x8000, before it wraps), so the stream is less than one
/// cycle ahead of it and this is exact where RFC 3711's estimate (nearest index) would
/// take a stream that wrapped since the record for one that went back.
fn estimate_forward(stored: u64, seq: u16) -> Result<(u32, u64), SrtpError> {
    let ahead = u64::from(seq.wrapping_sub(stored as u16));
    let index = stored + ahead;
    if index > MAX_SRTP_INDEX {
        return Err(SrtpError::KeyExhausted);
    }
    // index <= MAX_SRTP_INDEX (48 bits): the ROC fits in 32 bits.
    Ok(((index >> 16) as u32, index))
}

/// Replicated progress of one SSRC of one direction of a context (hot standby): its
/// rollover counter and highest sequence number, and its SRTCP index (send: the next one
/// to use; receive: the highest seen, 0 before any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsrcProgress {
    pub ssrc: u32,
    pub roc: u32,
    pub seq: u16,
    pub srtcp_index: u32,
}

/// Parsed fixed part of an RTP header.
struct RtpHeader {
    len: usize,
    seq: u16,
    ssrc: u32,
}

/// Parses the RTP header (RFC 3550 §5.1, §5.3.1) within `pkt`.
fn parse_rtp(pkt: &[u8]) -> Result<RtpHeader, SrtpError> {
    let Some(fixed) = pkt.get(..RTP_HEADER_LEN) else {
        return Err(SrtpError::TooShort);
    };
    if fixed[0] >> 6 != 2 {
        return Err(SrtpError::InvalidPacket("RTP version is not 2"));
    }
    let cc = usize::from(fixed[0] & 0x0f);
    let mut len = RTP_HEADER_LEN + 4 * cc;
    if fixed[0] & 0x10 != 0 {
        let ext = pkt.get(len..len + 4).ok_or(SrtpError::TooShort)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if len > pkt.len() {
        return Err(SrtpError::TooShort);
    }
    Ok(RtpHeader {
        len,
        seq: u16::from_be_bytes([fixed[2], fixed[3]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
    })
}

/// Sender SSRC of the first RTCP packet of a compound packet (RFC 3550 §6.4).
fn parse_rtcp(pkt: &[u8]) -> Result<u32, SrtpError> {
    let Some(h) = pkt.get(..RTCP_HEADER_LEN) else {
        return Err(SrtpError::TooShort);
    };
    if h[0] >> 6 != 2 {
        return Err(SrtpError::InvalidPacket("RTCP version is not 2"));
    }
    Ok(u32::from_be_bytes([h[4], h[5], h[6], h[7]]))
}

/// An SRTP + SRTCP crypto context for one master key (one direction of an SDES
/// crypto attribute, or one side of DTLS-SRTP keying material).
///
/// The same context can protect (send) and unprotect (receive); the two directions keep
/// separate per-SSRC tables, each bounded by [`SrtpConfig::with_max_ssrcs`].
pub struct SrtpContext {
    profile: SrtpProfile,
    rtp: SessionCrypto,
    rtcp: SessionCrypto,
    replay_window: u64,
    mki: Option<Mki>,
    mki_len: usize,
    tx: Streams,
    rx: Streams,
}

impl fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("profile", &self.profile)
            .field("replay_window", &self.replay_window)
            .field("mki", &self.mki)
            .field("tx_ssrcs", &self.tx.entries.len())
            .field("rx_ssrcs", &self.rx.entries.len())
            .finish_non_exhaustive()
    }
}

impl SrtpContext {
    /// Derives the session keys for `profile` from `master` (RFC 3711 §4.3, KDR 0).
    pub fn new(
        profile: SrtpProfile,
        master: &MasterKey,
        config: SrtpConfig,
    ) -> Result<Self, SrtpError> {
        master.validate(profile)?;
        let kdf = Kdf::new(master)?;
        let rtp = SessionCrypto::derive(profile, &kdf, false)?;
        let rtcp = SessionCrypto::derive(profile, &kdf, true)?;
        Self::with_sessions(profile, rtp, rtcp, config)
    }

    fn with_sessions(
        profile: SrtpProfile,
        rtp: SessionCrypto,
        rtcp: SessionCrypto,
        config: SrtpConfig,
    ) -> Result<Self, SrtpError> {
        config.validate()?;
        Ok(SrtpContext {
            profile,
            rtp,
            rtcp,
            // validate() bounds it by MAX_REPLAY_WINDOW.
            replay_window: config.replay_window as u64,
            mki_len: config.mki_len(),
            mki: config.mki,
            tx: Streams::new(config.max_ssrcs),
            rx: Streams::new(config.max_ssrcs),
        })
    }

    /// Builds a context straight from session keys (the RFC 7714 vectors give those).
    #[cfg(test)]
    pub(crate) fn from_session_keys(
        profile: SrtpProfile,
        key: &[u8],
        salt: &[u8],
        config: SrtpConfig,
    ) -> Result<Self, SrtpError> {
        let mk = |_| SessionCrypto::gcm(key, salt);
        Self::with_sessions(profile, mk(0)?, mk(1)?, config)
    }

    /// The profile of this context.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Bytes that [`SrtpContext::protect_rtp`] appends: tag plus MKI.
    pub fn rtp_overhead(&self) -> usize {
        self.profile.rtp_tag_len() + self.mki_len
    }

    /// Bytes that [`SrtpContext::protect_rtcp`] appends: SRTCP index, tag and MKI.
    pub fn rtcp_overhead(&self) -> usize {
        self.profile.rtcp_tag_len() + SRTCP_INDEX_LEN + self.mki_len
    }

    /// Number of SSRCs with receive state.
    pub fn rx_ssrc_count(&self) -> usize {
        self.rx.entries.len()
    }

    /// Number of SSRCs with send state.
    pub fn tx_ssrc_count(&self) -> usize {
        self.tx.entries.len()
    }

    /// Progress of every SSRC this context sent, into `out` (hot standby index reports;
    /// called off the packet path).
    pub fn tx_progress(&self, out: &mut Vec<SsrcProgress>) {
        Self::progress(&self.tx, out, |s| s.next_srtcp_index);
    }

    /// Progress of every SSRC this context received (authenticated packets only).
    pub fn rx_progress(&self, out: &mut Vec<SsrcProgress>) {
        Self::progress(&self.rx, out, |s| s.rtcp.top().map_or(0, |t| t as u32));
    }

    fn progress(streams: &Streams, out: &mut Vec<SsrcProgress>, srtcp: impl Fn(&Stream) -> u32) {
        for s in &streams.entries {
            if let Some(top) = s.rtp.top() {
                out.push(SsrcProgress {
                    ssrc: s.ssrc,
                    roc: (top >> 16) as u32,
                    seq: top as u16,
                    srtcp_index: srtcp(s),
                });
            } else if s.next_srtcp_index > 1 || s.rtcp.top().is_some() {
                // RTCP only so far: no RTP index to restore, the SRTCP one still counts.
                out.push(SsrcProgress {
                    ssrc: s.ssrc,
                    roc: 0,
                    seq: 0,
                    srtcp_index: srtcp(s),
                });
            }
        }
    }

    /// Installs replicated progress of `ssrc` for sending (`tx`) or receiving: the RTP
    /// replay window starts at `roc`/`seq` (that index counts as seen), and the next
    /// packet's index is estimated forward from it (see [`estimate_forward`]). Past the
    /// SSRC bound: [`SrtpError::TooManySsrcs`].
    pub fn restore_ssrc(
        &mut self,
        tx: bool,
        ssrc: u32,
        roc: u32,
        seq: u16,
    ) -> Result<(), SrtpError> {
        let index = (u64::from(roc) << 16) | u64::from(seq);
        if index > MAX_SRTP_INDEX {
            return Err(SrtpError::KeyExhausted);
        }
        let streams = if tx { &mut self.tx } else { &mut self.rx };
        let i = streams.get_or_insert(ssrc)?;
        let s = &mut streams.entries[i];
        s.rtp = ReplayWindow::new();
        s.rtp.update(index);
        s.restored = true;
        Ok(())
    }

    /// Sets the next SRTCP index sent for `ssrc` (a restored sender continues past the
    /// indexes its predecessor may have used). Past the SSRC bound:
    /// [`SrtpError::TooManySsrcs`]; past the 31-bit space: [`SrtpError::KeyExhausted`].
    pub fn set_srtcp_index(&mut self, ssrc: u32, next: u32) -> Result<(), SrtpError> {
        if next > MAX_SRTCP_INDEX {
            return Err(SrtpError::KeyExhausted);
        }
        let i = self.tx.get_or_insert(ssrc)?;
        self.tx.entries[i].next_srtcp_index = next;
        Ok(())
    }

    /// Forgets send and receive state of `ssrc` (after an RTCP BYE, say). Returns
    /// whether there was any.
    pub fn remove_ssrc(&mut self, ssrc: u32) -> bool {
        let tx = self.tx.remove(ssrc);
        let rx = self.rx.remove(ssrc);
        tx || rx
    }

    fn check_room(buf: &[u8], needed: usize) -> Result<(), SrtpError> {
        if needed > buf.len() {
            return Err(SrtpError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        Ok(())
    }

    /// Protects the RTP packet in `buf[..len]` in place and returns the SRTP length.
    /// `buf` needs [`SrtpContext::rtp_overhead`] bytes of tailroom after `len`.
    ///
    /// Like libsrtp, re-protecting an index already sent (or older than the replay
    /// window) is refused with [`SrtpError::Replayed`]: it would reuse keystream.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let pkt = buf.get(..len).ok_or(SrtpError::BufferTooSmall {
            needed: len,
            available: buf.len(),
        })?;
        let hdr = parse_rtp(pkt)?;
        let tag_len = self.profile.rtp_tag_len();
        let out_len = len + tag_len + self.mki_len;
        Self::check_room(buf, out_len)?;

        let si = self.tx.get_or_insert(hdr.ssrc)?;
        let stream = &mut self.tx.entries[si];
        let (roc, index) = match stream.rtp.top() {
            Some(top) if stream.restored => estimate_forward(top, hdr.seq)?,
            top => estimate_index(top, hdr.seq)?,
        };
        stream.rtp.check(index, self.replay_window)?;

        match &self.rtp {
            SessionCrypto::Cm(cm) => {
                cm.crypt(hdr.ssrc, index, &mut buf[hdr.len..len]);
                let tag = cm.mac(&buf[..len], Some(roc));
                if let Some(mki) = &self.mki {
                    buf[len..len + self.mki_len].copy_from_slice(mki.as_bytes());
                }
                buf[len + self.mki_len..out_len].copy_from_slice(&tag[..tag_len]);
            }
            SessionCrypto::Gcm(gcm) => {
                let nonce = gcm.rtp_nonce(hdr.ssrc, roc, hdr.seq);
                let (head, body) = buf.split_at_mut(hdr.len);
                let tag = gcm.seal(nonce, head, &mut body[..len - hdr.len])?;
                buf[len..len + tag_len].copy_from_slice(&tag);
                if let Some(mki) = &self.mki {
                    buf[len + tag_len..out_len].copy_from_slice(mki.as_bytes());
                }
            }
        }
        stream.rtp.update(index);
        stream.restored = false;
        Ok(out_len)
    }

    /// Verifies and decrypts the SRTP packet that fills `buf`, in place. Returns the
    /// length of the RTP packet at the start of `buf`. On error the contents of `buf`
    /// are unspecified and the packet must be dropped.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.profile.rtp_tag_len();
        let trailer = tag_len + self.mki_len;
        let Some(end) = buf.len().checked_sub(trailer) else {
            return Err(SrtpError::TooShort);
        };
        let hdr = parse_rtp(&buf[..end])?;

        let (mki_at, tag_at) = if self.profile.is_aead() {
            (end + tag_len, end)
        } else {
            (end, end + self.mki_len)
        };
        if let Some(mki) = &self.mki {
            if &buf[mki_at..mki_at + self.mki_len] != mki.as_bytes() {
                return Err(SrtpError::BadMki);
            }
        }

        let existing = self.rx.position(hdr.ssrc);
        if existing.is_none() && !self.rx.has_room() {
            return Err(SrtpError::TooManySsrcs);
        }
        let highest = existing.and_then(|i| self.rx.entries[i].rtp.top());
        let restored = existing.is_some_and(|i| self.rx.entries[i].restored);
        let (roc, index) = match highest {
            Some(top) if restored => estimate_forward(top, hdr.seq)?,
            top => estimate_index(top, hdr.seq)?,
        };
        if let Some(i) = existing {
            self.rx.entries[i].rtp.check(index, self.replay_window)?;
        }

        match &self.rtp {
            SessionCrypto::Cm(cm) => {
                cm.verify(&buf[..end], Some(roc), &buf[tag_at..tag_at + tag_len])?;
                cm.crypt(hdr.ssrc, index, &mut buf[hdr.len..end]);
            }
            SessionCrypto::Gcm(gcm) => {
                let nonce = gcm.rtp_nonce(hdr.ssrc, roc, hdr.seq);
                let (head, rest) = buf.split_at_mut(hdr.len);
                let (body, tail) = rest.split_at_mut(end - hdr.len);
                gcm.open(nonce, head, body, &tail[..tag_len])?;
            }
        }

        // Authenticated: now the SSRC may get state (room was checked above).
        let si = self.rx.get_or_insert(hdr.ssrc)?;
        self.rx.entries[si].rtp.update(index);
        self.rx.entries[si].restored = false;
        Ok(end)
    }

    /// Protects the RTCP compound packet in `buf[..len]` in place (always encrypted,
    /// E = 1) and returns the SRTCP length. `buf` needs [`SrtpContext::rtcp_overhead`]
    /// bytes of tailroom after `len`.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let pkt = buf.get(..len).ok_or(SrtpError::BufferTooSmall {
            needed: len,
            available: buf.len(),
        })?;
        let ssrc = parse_rtcp(pkt)?;
        let tag_len = self.profile.rtcp_tag_len();
        let out_len = len + SRTCP_INDEX_LEN + tag_len + self.mki_len;
        Self::check_room(buf, out_len)?;

        let si = self.tx.get_or_insert(ssrc)?;
        let stream = &mut self.tx.entries[si];
        let index = stream.next_srtcp_index;
        if index > MAX_SRTCP_INDEX {
            return Err(SrtpError::KeyExhausted);
        }
        let e_index = (SRTCP_E_FLAG | index).to_be_bytes();

        match &self.rtcp {
            SessionCrypto::Cm(cm) => {
                cm.crypt(ssrc, u64::from(index), &mut buf[RTCP_HEADER_LEN..len]);
                buf[len..len + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                let auth_end = len + SRTCP_INDEX_LEN;
                let tag = cm.mac(&buf[..auth_end], None);
                if let Some(mki) = &self.mki {
                    buf[auth_end..auth_end + self.mki_len].copy_from_slice(mki.as_bytes());
                }
                buf[auth_end + self.mki_len..out_len].copy_from_slice(&tag[..tag_len]);
            }
            SessionCrypto::Gcm(gcm) => {
                // AAD = first 8 octets || E || SRTCP index (RFC 7714 §9.2).
                let mut aad = [0u8; RTCP_HEADER_LEN + SRTCP_INDEX_LEN];
                aad[..RTCP_HEADER_LEN].copy_from_slice(&buf[..RTCP_HEADER_LEN]);
                aad[RTCP_HEADER_LEN..].copy_from_slice(&e_index);
                let nonce = gcm.rtcp_nonce(ssrc, index);
                let tag = gcm.seal(nonce, &aad, &mut buf[RTCP_HEADER_LEN..len])?;
                buf[len..len + tag_len].copy_from_slice(&tag);
                let idx_at = len + tag_len;
                buf[idx_at..idx_at + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                if let Some(mki) = &self.mki {
                    buf[idx_at + SRTCP_INDEX_LEN..out_len].copy_from_slice(mki.as_bytes());
                }
            }
        }
        stream.next_srtcp_index = index + 1;
        Ok(out_len)
    }

    /// Verifies and, if its E flag is set, decrypts the SRTCP packet that fills `buf`,
    /// in place. Returns the length of the RTCP packet at the start of `buf`. On error
    /// the contents of `buf` are unspecified and the packet must be dropped.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.profile.rtcp_tag_len();
        let trailer = SRTCP_INDEX_LEN + tag_len + self.mki_len;
        let Some(end) = buf.len().checked_sub(trailer) else {
            return Err(SrtpError::TooShort);
        };
        let ssrc = parse_rtcp(&buf[..end])?;

        // CM:  packet | E+index | MKI | tag       (RFC 3711 §3.4)
        // GCM: packet' | tag | E+index | MKI      (RFC 7714 §9, packet' encrypted)
        let (idx_at, mki_at, tag_at) = if self.profile.is_aead() {
            (end + tag_len, end + tag_len + SRTCP_INDEX_LEN, end)
        } else {
            (
                end,
                end + SRTCP_INDEX_LEN,
                end + SRTCP_INDEX_LEN + self.mki_len,
            )
        };
        if let Some(mki) = &self.mki {
            if &buf[mki_at..mki_at + self.mki_len] != mki.as_bytes() {
                return Err(SrtpError::BadMki);
            }
        }
        let mut e_index = [0u8; SRTCP_INDEX_LEN];
        e_index.copy_from_slice(&buf[idx_at..idx_at + SRTCP_INDEX_LEN]);
        let word = u32::from_be_bytes(e_index);
        let encrypted = word & SRTCP_E_FLAG != 0;
        let index = word & MAX_SRTCP_INDEX;

        let existing = self.rx.position(ssrc);
        if existing.is_none() && !self.rx.has_room() {
            return Err(SrtpError::TooManySsrcs);
        }
        if let Some(i) = existing {
            self.rx.entries[i]
                .rtcp
                .check(u64::from(index), self.replay_window)?;
        }

        match &self.rtcp {
            SessionCrypto::Cm(cm) => {
                cm.verify(
                    &buf[..end + SRTCP_INDEX_LEN],
                    None,
                    &buf[tag_at..tag_at + tag_len],
                )?;
                if encrypted {
                    cm.crypt(ssrc, u64::from(index), &mut buf[RTCP_HEADER_LEN..end]);
                }
            }
            SessionCrypto::Gcm(gcm) => {
                let nonce = gcm.rtcp_nonce(ssrc, index);
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&buf[tag_at..tag_at + tag_len]);
                if encrypted {
                    let mut aad = [0u8; RTCP_HEADER_LEN + SRTCP_INDEX_LEN];
                    aad[..RTCP_HEADER_LEN].copy_from_slice(&buf[..RTCP_HEADER_LEN]);
                    aad[RTCP_HEADER_LEN..].copy_from_slice(&e_index);
                    gcm.open(nonce, &aad, &mut buf[RTCP_HEADER_LEN..end], &tag)?;
                } else {
                    // E = 0: the AAD is the whole packet || E+index (RFC 7714 §9.3). Move
                    // the index word over the tag (copied out above) so the AAD is
                    // contiguous; the packet is dropped anyway if this fails.
                    buf[end..end + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                    gcm.open(nonce, &buf[..end + SRTCP_INDEX_LEN], &mut [], &tag)?;
                }
            }
        }

        let si = self.rx.get_or_insert(ssrc)?;
        self.rx.entries[si].rtcp.update(u64::from(index));
        Ok(end)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn index_estimation_follows_rfc3711_appendix_a() {
        // First packet.
        assert_eq!(estimate_index(None, 7), Ok((0, 7)));
        // In order.
        assert_eq!(estimate_index(Some(100), 101), Ok((0, 101)));
        // Wrap forward: highest 65535, seq 0 -> ROC 1.
        assert_eq!(estimate_index(Some(0xffff), 0), Ok((1, 0x1_0000)));
        // Late packet from before the wrap: highest is ROC 1 seq 2, seq 65534 -> ROC 0.
        assert_eq!(estimate_index(Some(0x1_0002), 0xfffe), Ok((0, 0xfffe)));
        // With ROC 0 there is no earlier cycle.
        assert_eq!(estimate_index(Some(5), 0xfff0), Err(SrtpError::Replayed));
        // Highest in upper half, small seq -> next cycle.
        assert_eq!(estimate_index(Some(0x3_9000), 0x0100), Ok((4, 0x4_0100)));
        // Highest in upper half, seq within half a cycle -> same cycle.
        assert_eq!(estimate_index(Some(0x3_9000), 0x2000), Ok((3, 0x3_2000)));
        // ROC cannot exceed 2^32 - 1.
        assert_eq!(
            estimate_index(Some(MAX_SRTP_INDEX), 0),
            Err(SrtpError::KeyExhausted)
        );
    }

    #[test]
    fn a_restored_stream_is_estimated_forward_from_its_record() {
        assert_eq!(estimate_forward(0x8000, 0x8000), Ok((0, 0x8000)));
        assert_eq!(estimate_forward(0x8000, 0xf000), Ok((0, 0xf000)));
        // Wrapped since the record (RFC 3711's nearest guess would say ROC 0).
        assert_eq!(estimate_forward(0x8000, 0x0100), Ok((1, 0x1_0100)));
        assert_eq!(estimate_index(Some(0x8000), 0x0100), Ok((0, 0x0100)));
        // Up to one short of a whole cycle ahead.
        assert_eq!(estimate_forward(0x3_0005, 0x0004), Ok((4, 0x4_0004)));
        assert_eq!(
            estimate_forward(MAX_SRTP_INDEX, 0),
            Err(SrtpError::KeyExhausted)
        );
    }

    #[test]
    fn a_restored_receiver_takes_what_follows_its_record_only() {
        let p = SrtpProfile::AesCm128HmacSha1_80;
        let k = MasterKey::new(&[3; 16], &[4; 14]);
        let mut tx = SrtpContext::new(p, &k, SrtpConfig::default()).unwrap();
        let mut rx = SrtpContext::new(p, &k, SrtpConfig::default()).unwrap();
        rx.restore_ssrc(false, 9, 0, 15).unwrap();
        let mut sent = Vec::new();
        for seq in 10..20u16 {
            let mut b = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3, 4];
            b[2..4].copy_from_slice(&seq.to_be_bytes());
            b.resize(16 + 10, 0);
            let n = tx.protect_rtp(&mut b, 16).unwrap();
            b.truncate(n);
            sent.push(b);
        }
        // The recorded index is a replay; earlier ones read as a cycle ahead and fail.
        assert_eq!(
            rx.unprotect_rtp(&mut sent[5].clone()),
            Err(SrtpError::Replayed)
        );
        assert!(rx.unprotect_rtp(&mut sent[4].clone()).is_err());
        assert_eq!(rx.unprotect_rtp(&mut sent[6].clone()), Ok(16));
        // Then RFC 3711 as usual: a late packet inside the window is accepted once.
        assert_eq!(rx.unprotect_rtp(&mut sent[8].clone()), Ok(16));
        assert_eq!(rx.unprotect_rtp(&mut sent[7].clone()), Ok(16));
        assert_eq!(
            rx.unprotect_rtp(&mut sent[7].clone()),
            Err(SrtpError::Replayed)
        );
        let mut progress = Vec::new();
        rx.rx_progress(&mut progress);
        assert_eq!((progress[0].roc, progress[0].seq), (0, 18));
    }

    #[test]
    fn rtp_header_parsing() {
        let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        let h = parse_rtp(&p).unwrap();
        assert_eq!((h.len, h.seq, h.ssrc), (12, 1, 0xdeadbeef));
        p[0] = 0x92; // X=1, CC=2
        assert_eq!(parse_rtp(&p).err(), Some(SrtpError::TooShort));
        p.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2, 0xbe, 0xde, 0, 1, 9, 9, 9, 9]);
        assert_eq!(parse_rtp(&p).map(|h| h.len), Ok(28));
        p[0] = 0x40;
        assert!(matches!(parse_rtp(&p), Err(SrtpError::InvalidPacket(_))));
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).expect("test vector hex")
    }

    const RFC7714_SALT: &str = "517569642070726f2071756f";
    const RFC7714_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
    const RFC7714_KEY_256: &str =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const RFC7714_RTP: &str = "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e697320
        646976697361 20696e207061727465732074726573";
    const RFC7714_RTCP: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e930
        4c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

    fn gcm_ctx(profile: SrtpProfile, key: &str) -> SrtpContext {
        SrtpContext::from_session_keys(
            profile,
            &unhex(key),
            &unhex(RFC7714_SALT),
            SrtpConfig::default(),
        )
        .unwrap()
    }

    // RFC 7714 §16.1.1 (AES-128) and §16.2.1 (AES-256): SRTP encryption, full packet.
    #[test]
    fn rfc7714_16_srtp_packets() {
        for (profile, key, srtp) in [
            (
                SrtpProfile::AeadAes128Gcm,
                RFC7714_KEY_128,
                "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f
                 42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
            ),
            (
                SrtpProfile::AeadAes256Gcm,
                RFC7714_KEY_256,
                "8040f17b8041f8d35501a0b232b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3
                 b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
            ),
        ] {
            let plain = unhex(RFC7714_RTP);
            let expected = unhex(srtp);
            let mut buf = plain.clone();
            buf.resize(plain.len() + 16, 0);
            let n = gcm_ctx(profile, key)
                .protect_rtp(&mut buf, plain.len())
                .unwrap();
            assert_eq!(&buf[..n], &expected[..], "{profile}");

            let mut rx = gcm_ctx(profile, key);
            let mut buf = expected.clone();
            let n = rx.unprotect_rtp(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..], "{profile}");
        }
    }

    // RFC 7714 §17.1 (AES-128) and §17.2 (AES-256): SRTCP with E = 1, index 0x5d4.
    #[test]
    fn rfc7714_17_srtcp_encrypted_packets() {
        for (profile, key, srtcp) in [
            (
                SrtpProfile::AeadAes128Gcm,
                RFC7714_KEY_128,
                "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1
                 730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4",
            ),
            (
                SrtpProfile::AeadAes256Gcm,
                RFC7714_KEY_256,
                "81c8000d4d617273d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1
                 110555be8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be800005d4",
            ),
        ] {
            let plain = unhex(RFC7714_RTCP);
            let expected = unhex(srtcp);
            let mut rx = gcm_ctx(profile, key);
            let mut buf = expected.clone();
            let n = rx.unprotect_rtcp(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..], "{profile}");
            // Replaying the same index fails.
            let mut again = expected.clone();
            assert_eq!(rx.unprotect_rtcp(&mut again), Err(SrtpError::Replayed));

            // Protect with the sender's SRTCP index positioned at 0x5d4.
            let mut tx = gcm_ctx(profile, key);
            let si = tx.tx.get_or_insert(0x4d617273).unwrap();
            tx.tx.entries[si].next_srtcp_index = 0x5d4;
            let mut buf = plain.clone();
            buf.resize(plain.len() + tx.rtcp_overhead(), 0);
            let n = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
            assert_eq!(&buf[..n], &expected[..], "{profile}");
        }
    }

    // RFC 7714 §17.3: SRTCP AEAD_AES_128_GCM, authenticated only (E = 0).
    #[test]
    fn rfc7714_17_3_srtcp_tag_only() {
        let plain = unhex(RFC7714_RTCP);
        let mut buf = plain.clone();
        buf.extend_from_slice(&unhex("841dd9683dd78ec92ae58790125f62b3000005d4"));
        let mut rx = gcm_ctx(SrtpProfile::AeadAes128Gcm, RFC7714_KEY_128);
        let n = rx.unprotect_rtcp(&mut buf.clone()).unwrap();
        assert_eq!(n, plain.len());
        // A flipped payload bit fails.
        buf[20] ^= 1;
        let mut rx = gcm_ctx(SrtpProfile::AeadAes128Gcm, RFC7714_KEY_128);
        assert_eq!(
            rx.unprotect_rtcp(&mut buf),
            Err(SrtpError::AuthenticationFailed)
        );
    }
}
