//! The media relay: per-stream state (keys, latching) and the worker threads that own
//! the sockets.
//!
//! Two parts. The core ([`LegState`], [`Latch`], [`relay_packet`]) is sans-IO: bytes,
//! source address and `now` in, a destination and length (or a [`DropReason`]) out. The
//! worker ([`spawn_worker`]) owns its calls' sockets, polls them with `mio`, and drives
//! the core. A call is owned by exactly one worker; the packet path takes no lock,
//! allocates nothing (one set of batch buffers per worker, metric handles registered at
//! start) and touches only that worker's state.
//!
//! Batching: a ready socket is read with one `recvmmsg` (up to [`BATCH`] datagrams) and
//! what it relays leaves with one `sendmmsg` per outgoing socket ([`crate::udp_batch`]),
//! then the recording taps' copies with one `sendmmsg` per tap; a loaded worker finds many
//! sockets ready per `epoll_wait` by itself. Relayed and dropped packets are counted in
//! plain integers and published ([`WorkerStats`], metrics) once per wake-up. A worker may also
//! pace itself (`batch_interval`, off by default): after a wake-up that found packets it
//! sleeps that long before looking again, so one wake-up serves every packet that
//! arrived meanwhile. When a look finds nothing it blocks in `epoll_wait` again, so an
//! idle worker costs nothing and the first packet after silence is not delayed. On the
//! 2-core VM of `benches/README.md` pacing bought little (the cost is per-socket system
//! calls, not wake-ups) and added its interval to latency, hence off by default.
//!
//! Latching (DESIGN.md "Latch only on authenticated media"): an SRTP leg sends to the
//! address its SDP gave until a packet from that leg passes SRTP authentication; the
//! source of such packets becomes the latched peer. Another authenticated source takes
//! over only after the latched one was silent for `relatch_after`. A plain RTP leg with
//! a usable SDP address accepts packets only from that IP and sends to the SDP address;
//! one without (0.0.0.0, an FQDN) latches the first packet's source, with the same
//! re-latch rule.
//!
//! Hot standby (`relay/indexes.rs`): the worker reports each call's SRTP progress and
//! latches off the packet path, and installs a restored call's progress before its first
//! packet.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use sbc_core::media::{CallRef, LegSide};
use sbc_core::tap::{TapId, TapLegs};
use sbc_core::tenant::TenantId;

use crate::ports::{BoundPair, PortLease};
use crate::srtp::{
    MasterKey, Mki, SrtpConfig, SrtpContext, SrtpError, SrtpProfile, DEFAULT_MAX_SSRCS, MAX_MKI_LEN,
};
use crate::udp_batch::{send_batch, RecvBatch, BATCH};

mod indexes;
mod latency;
pub use indexes::{
    IndexReport, IndexReporter, LegProgress, StreamProgress, TapProgress, INDEX_QUEUE,
    SRTCP_RESTORE_MARGIN,
};
use latency::LatencySampler;
pub use latency::LATENCY_SAMPLE_EVERY;

/// Largest datagram relayed. RTP over UDP stays under the path MTU (1500); 2048 leaves
/// room for jumbo-ish video packets. Larger datagrams are dropped as truncated.
pub const MAX_DATAGRAM: usize = 2048;

/// Tailroom for the largest SRTP/SRTCP trailer we add: 16-byte GCM tag, 4-byte SRTCP
/// index, and an MKI (we never send one, but the bound keeps `protect` total).
const TAILROOM: usize = 16 + 4 + MAX_MKI_LEN;

/// Worker receive buffer: one datagram plus tailroom.
const BUF_LEN: usize = MAX_DATAGRAM + TAILROOM;

/// How often a worker checks its calls for media timeout. The timeout is reported at
/// most this late; 100 ms is small against the default 60 s.
const TICK: Duration = Duration::from_millis(100);

/// Readiness events handled per poll wakeup.
const EVENTS_CAPACITY: usize = 256;

const WAKER: Token = Token(usize::MAX);

/// Default pause of a busy worker between two looks at its sockets
/// ([`WorkerParams::batch_interval`]): none. A pause adds up to its length (plus timer
/// slack) to a packet's latency.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::ZERO;

/// Filler for unused batch entries.
const NO_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Consecutive receive errors tolerated on one socket per wakeup (pending ICMP errors
/// are reported one per read); past this the socket waits for its next readiness.
const MAX_RECV_ERRORS: u32 = 8;

/// Why a packet was dropped: the bounded `reason` label of
/// `sbc_media_packets_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// SRTP/SRTCP authentication failed (forged, corrupted, or wrong key).
    AuthFailed,
    /// SRTP replay window rejected it.
    Replayed,
    /// Not a well-formed RTP/RTCP (or SRTP) packet.
    InvalidPacket,
    /// The leg is SRTP but has no key yet (offer not answered).
    NoCrypto,
    /// Authentic, but from a source other than the latched peer, which is not silent.
    UnexpectedSource,
    /// No address to send to on the other leg yet.
    NoPeer,
    /// Larger than [`MAX_DATAGRAM`].
    Truncated,
    /// The kernel refused the send.
    SendFailed,
    /// Any other SRTP error (SSRC bound, key exhausted, MKI, ...).
    Srtp,
    /// Authentic, but the call's tenant is over its media bandwidth.
    TenantBandwidth,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 10;

    /// Every reason, in index order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::AuthFailed,
        DropReason::Replayed,
        DropReason::InvalidPacket,
        DropReason::NoCrypto,
        DropReason::UnexpectedSource,
        DropReason::NoPeer,
        DropReason::Truncated,
        DropReason::SendFailed,
        DropReason::Srtp,
        DropReason::TenantBandwidth,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replayed => "replayed",
            DropReason::InvalidPacket => "invalid_packet",
            DropReason::NoCrypto => "no_crypto",
            DropReason::UnexpectedSource => "unexpected_source",
            DropReason::NoPeer => "no_peer",
            DropReason::Truncated => "truncated",
            DropReason::SendFailed => "send_failed",
            DropReason::Srtp => "srtp_other",
            DropReason::TenantBandwidth => "tenant_bandwidth",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// True when the packet was accepted from its leg before it was dropped (it counts
    /// as media activity).
    fn after_accept(self) -> bool {
        matches!(
            self,
            DropReason::NoPeer
                | DropReason::SendFailed
                | DropReason::Srtp
                | DropReason::TenantBandwidth
        )
    }

    fn from_srtp(e: SrtpError) -> DropReason {
        match e {
            SrtpError::AuthenticationFailed => DropReason::AuthFailed,
            SrtpError::Replayed => DropReason::Replayed,
            SrtpError::TooShort | SrtpError::InvalidPacket(_) => DropReason::InvalidPacket,
            _ => DropReason::Srtp,
        }
    }
}

/// RTP or RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Rtp,
    Rtcp,
}

impl PacketKind {
    /// Classifies a packet received on an RTP port that may carry muxed RTCP: RTCP
    /// packet types 192..=223 (RFC 5761 §4; SR/RR/SDES/BYE/APP are 200..=204).
    pub fn classify_muxed(packet: &[u8]) -> PacketKind {
        match packet.get(1) {
            Some(pt) if (192..=223).contains(pt) => PacketKind::Rtcp,
            _ => PacketKind::Rtp,
        }
    }
}

/// An SRTP master key with its suite and MKI, as announced in SDP.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub profile: SrtpProfile,
    pub key: MasterKey,
    pub mki: Option<Mki>,
}

impl KeySpec {
    fn same(&self, other: &KeySpec) -> bool {
        self.profile == other.profile
            && self.key.key == other.key.key
            && self.key.salt == other.key.salt
            && self.mki.as_ref().map(Mki::as_bytes) == other.mki.as_ref().map(Mki::as_bytes)
    }

    fn context(&self) -> Result<SrtpContext, SrtpError> {
        let mut cfg = SrtpConfig::default();
        if let Some(mki) = self.mki {
            cfg = cfg.with_mki(mki);
        }
        SrtpContext::new(self.profile, &self.key, cfg)
    }
}

/// What the control side tells a worker about one leg of one stream.
#[derive(Debug, Clone)]
pub struct LegConfig {
    /// SRTP on this leg.
    pub secure: bool,
    /// The key the leg's peer announced: we decrypt what it sends with it.
    pub rx: Option<KeySpec>,
    /// The key we announced to the leg's peer: we encrypt what we send it with it.
    pub tx: Option<KeySpec>,
    /// RTCP multiplexed on the RTP port (RFC 5761).
    pub rtcp_mux: bool,
    /// RTP address from the peer's SDP.
    pub sdp_rtp: Option<SocketAddr>,
    /// RTCP address from the peer's SDP (`a=rtcp`, or RTP port + 1).
    pub sdp_rtcp: Option<SocketAddr>,
}

/// Where a leg's peer is.
#[derive(Debug, Clone, Default)]
pub struct Latch {
    sdp: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    last_seen: Option<Instant>,
}

fn usable(addr: Option<SocketAddr>) -> Option<SocketAddr> {
    addr.filter(|a| !a.ip().is_unspecified() && a.port() != 0)
}

impl Latch {
    /// A latch starting from the SDP address.
    pub fn new(sdp: Option<SocketAddr>) -> Self {
        Latch {
            sdp,
            latched: None,
            last_seen: None,
        }
    }

    /// Where to send: the latched peer, else the SDP address if usable.
    pub fn dest(&self) -> Option<SocketAddr> {
        self.latched.or(usable(self.sdp))
    }

    /// The latched peer, if any packet latched.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    /// Decides whether a packet from `src` is accepted. `authenticated` packets (SRTP)
    /// may latch; unauthenticated ones only latch when the SDP gave no usable address.
    pub fn accept(
        &mut self,
        now: Instant,
        src: SocketAddr,
        authenticated: bool,
        relatch_after: Duration,
    ) -> Result<(), DropReason> {
        if !authenticated {
            if let Some(sdp) = usable(self.sdp) {
                if src.ip() != sdp.ip() {
                    return Err(DropReason::UnexpectedSource);
                }
                self.last_seen = Some(now);
                return Ok(());
            }
        }
        match self.latched {
            Some(peer) if peer == src => {}
            Some(_) => {
                let silent = self
                    .last_seen
                    .is_none_or(|t| now.saturating_duration_since(t) >= relatch_after);
                if !silent {
                    return Err(DropReason::UnexpectedSource);
                }
                self.latched = Some(src);
            }
            None => self.latched = Some(src),
        }
        self.last_seen = Some(now);
        Ok(())
    }

    fn set_sdp(&mut self, sdp: Option<SocketAddr>) {
        if self.sdp != sdp {
            self.sdp = sdp;
            self.reset();
        }
    }

    fn reset(&mut self) {
        self.latched = None;
        self.last_seen = None;
    }
}

/// One leg of one stream: keys and where the peer is.
#[derive(Debug)]
pub struct LegState {
    secure: bool,
    rx: Option<(KeySpec, SrtpContext)>,
    tx: Option<(KeySpec, SrtpContext)>,
    rtcp_mux: bool,
    rtp: Latch,
    rtcp: Latch,
}

impl LegState {
    /// A leg from its first configuration.
    pub fn new(cfg: &LegConfig) -> Result<Self, SrtpError> {
        let mut leg = LegState {
            secure: cfg.secure,
            rx: None,
            tx: None,
            rtcp_mux: cfg.rtcp_mux,
            rtp: Latch::new(cfg.sdp_rtp),
            rtcp: Latch::new(cfg.sdp_rtcp),
        };
        leg.update(cfg)?;
        Ok(leg)
    }

    /// Applies a new configuration (an answer, or a re-offer's answer). Same keys keep
    /// their contexts (ROC, replay windows); new keys get new contexts. A new receive key
    /// or a new SDP address drops the latched peer: only packets under the new key can
    /// latch again.
    pub fn update(&mut self, cfg: &LegConfig) -> Result<(), SrtpError> {
        let rx_changed = !same_key(self.rx.as_ref(), cfg.rx.as_ref());
        if rx_changed {
            self.rx = match &cfg.rx {
                Some(k) => Some((k.clone(), k.context()?)),
                None => None,
            };
            self.rtp.reset();
            self.rtcp.reset();
        }
        if !same_key(self.tx.as_ref(), cfg.tx.as_ref()) {
            self.tx = match &cfg.tx {
                Some(k) => Some((k.clone(), k.context()?)),
                None => None,
            };
        }
        self.secure = cfg.secure;
        self.rtcp_mux = cfg.rtcp_mux;
        self.rtp.set_sdp(cfg.sdp_rtp);
        self.rtcp.set_sdp(if cfg.rtcp_mux {
            cfg.sdp_rtp
        } else {
            cfg.sdp_rtcp
        });
        Ok(())
    }

    /// The latched RTP peer.
    pub fn latched_rtp(&self) -> Option<SocketAddr> {
        self.rtp.latched()
    }

    /// Where RTCP for this leg's peer goes.
    fn rtcp_dest(&self) -> Option<SocketAddr> {
        if let Some(a) = self.rtcp.latched() {
            return Some(a);
        }
        if self.rtcp_mux {
            return self.rtp.dest();
        }
        if let Some(rtp) = self.rtp.latched() {
            // Learned the peer's RTP address; its RTCP port is the SDP's (or RTP + 1).
            let port = usable(self.rtcp.sdp).map_or(rtp.port().wrapping_add(1), |s| s.port());
            return Some(SocketAddr::new(rtp.ip(), port));
        }
        usable(self.rtcp.sdp)
    }
}

/// One leg's media counters for the admin plane: written by the leg's worker only (plain
/// stores, no read-modify-write), read by anyone.
#[derive(Debug, Default)]
pub struct LegCounters {
    /// RTP packets from this leg's peer that passed authentication and latching.
    pub received: AtomicU64,
    /// RTP packets relayed to this leg's peer (taken by the kernel).
    pub sent: AtomicU64,
    /// RTP packets of the peer's streams missing from the sequence numbers seen
    /// (expected minus received, RFC 3550 A.3; a late packet counts as received).
    pub lost: AtomicU64,
}

/// Receive-side sequence tracking of one leg's RTP (one SSRC at a time; a new SSRC
/// starts a new count and keeps the old one's losses).
#[derive(Debug, Default)]
struct SeqTrack {
    ssrc: Option<u32>,
    /// Extended first and highest sequence numbers of the current SSRC.
    base: u64,
    max: u64,
    received: u64,
    /// Losses of earlier SSRCs.
    lost_before: u64,
    total_received: u64,
}

/// Extended sequence numbers start here, so packets from before the first one seen
/// (reordering) stay positive.
const SEQ_BASE: u64 = 1 << 32;
/// Sequence jumps past these (forward, backward) are a restarted sequence, not a loss or
/// a late packet (RFC 3550 A.1's MAX_DROPOUT and MAX_MISORDER).
const MAX_DROPOUT: i64 = 3000;
const MAX_MISORDER: i64 = 100;

impl SeqTrack {
    /// Counts one clear RTP packet (at least 12 bytes; shorter ones are ignored).
    fn on_rtp(&mut self, clear: &[u8], counters: &LegCounters) {
        let (Some(seq), Some(ssrc)) = (clear.get(2..4), clear.get(8..12)) else {
            return;
        };
        let seq = u16::from_be_bytes([seq[0], seq[1]]);
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        // The distance of `seq` from the highest seen, the nearer way round the wrap.
        let delta = i64::from(seq.wrapping_sub(self.max as u16) as i16);
        if self.ssrc != Some(ssrc) || !(-MAX_MISORDER..=MAX_DROPOUT).contains(&delta) {
            // A new source, or the same one restarting its sequence: count afresh and
            // keep what was lost before.
            self.lost_before = self.lost();
            self.ssrc = Some(ssrc);
            self.base = SEQ_BASE + u64::from(seq);
            self.max = self.base;
            self.received = 0;
        } else {
            self.max = self.max.max(self.max.saturating_add_signed(delta));
        }
        self.received += 1;
        self.total_received += 1;
        counters
            .received
            .store(self.total_received, Ordering::Relaxed);
        counters.lost.store(self.lost(), Ordering::Relaxed);
    }

    fn lost(&self) -> u64 {
        let expected = if self.ssrc.is_some() {
            self.max - self.base + 1
        } else {
            0
        };
        self.lost_before + expected.saturating_sub(self.received)
    }
}

fn same_key(cur: Option<&(KeySpec, SrtpContext)>, new: Option<&KeySpec>) -> bool {
    match (cur, new) {
        (None, None) => true,
        (Some((a, _)), Some(b)) => a.same(b),
        _ => false,
    }
}

/// A packet to send: to `dest`, the first `len` bytes of the buffer, from the leg's RTCP
/// socket when `via_rtcp_socket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub dest: SocketAddr,
    pub len: usize,
    pub via_rtcp_socket: bool,
}

fn check_plain(kind: PacketKind, pkt: &[u8]) -> Result<(), DropReason> {
    let min = match kind {
        PacketKind::Rtp => 12,
        PacketKind::Rtcp => 8,
    };
    if pkt.len() < min || pkt[0] >> 6 != 2 {
        return Err(DropReason::InvalidPacket);
    }
    Ok(())
}

/// Relays one packet received on `inbound` from `src`: the first `len` bytes of `buf`
/// hold it, and `buf` must have [`TAILROOM`] bytes past `len` for the SRTP trailer.
/// Decrypts with the inbound peer's key, latches, finds where to send, hands the clear
/// packet to `admit` (the worker's per-call checks: tenant bandwidth, then the recording
/// taps' copies; an `Err` drops the packet with that reason), encrypts with our key for
/// the outbound peer, and says where to send. `admit` runs only for a packet the call
/// will relay as far as this leg's state can tell, so a recorder never gets a copy of a
/// packet dropped for a missing peer or the tenant's bandwidth.
// The arguments are the packet and both legs' state; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn relay_packet(
    now: Instant,
    relatch_after: Duration,
    inbound: &mut LegState,
    outbound: &mut LegState,
    kind: PacketKind,
    src: SocketAddr,
    buf: &mut [u8],
    len: usize,
    admit: impl FnOnce(PacketKind, &[u8]) -> Result<(), DropReason>,
) -> Result<Forward, DropReason> {
    let packet = buf.get_mut(..len).ok_or(DropReason::Truncated)?;
    let plain_len = if inbound.secure {
        let (_, ctx) = inbound.rx.as_mut().ok_or(DropReason::NoCrypto)?;
        match kind {
            PacketKind::Rtp => ctx.unprotect_rtp(packet),
            PacketKind::Rtcp => ctx.unprotect_rtcp(packet),
        }
        .map_err(DropReason::from_srtp)?
    } else {
        check_plain(kind, packet)?;
        len
    };
    let latch = match kind {
        PacketKind::Rtp => &mut inbound.rtp,
        PacketKind::Rtcp => &mut inbound.rtcp,
    };
    latch.accept(now, src, inbound.secure, relatch_after)?;
    let dest = match kind {
        PacketKind::Rtp => outbound.rtp.dest(),
        PacketKind::Rtcp => outbound.rtcp_dest(),
    }
    .ok_or(DropReason::NoPeer)?;
    admit(kind, buf.get(..plain_len).ok_or(DropReason::Truncated)?)?;
    let out_len = if outbound.secure {
        let (_, ctx) = outbound.tx.as_mut().ok_or(DropReason::NoCrypto)?;
        match kind {
            PacketKind::Rtp => ctx.protect_rtp(buf, plain_len),
            PacketKind::Rtcp => ctx.protect_rtcp(buf, plain_len),
        }
        .map_err(|e| match DropReason::from_srtp(e) {
            // Our own transform failing is not the sender's fault; keep it apart from
            // authentication failures.
            DropReason::AuthFailed => DropReason::Srtp,
            r => r,
        })?
    } else {
        plain_len
    };
    Ok(Forward {
        dest,
        len: out_len,
        via_rtcp_socket: kind == PacketKind::Rtcp && !outbound.rtcp_mux,
    })
}

// ---------------------------------------------------------------------------------------
// Recording taps.
//
// A tap copies the clear RTP a leg sends (after unprotect and latching) to a recording
// engine: plain, or under the tap's own SRTP key with one context per leg, so the two
// legs' SSRCs and rollover counters never share state with each other or with the call.
// A copy is taken only of a packet the call relays (after latching, the peer check and
// the tenant's bandwidth), into the worker's tap outbox ([`TapOutbox`]); once the received
// batch is relayed, each tap's copies leave with one non-blocking `sendmmsg` on the tap's
// own socket, which nobody reads, like call media. The tap's queue is that socket's
// kernel send buffer: when it is full (`WouldBlock`) or the send fails, the copy is
// dropped and counted (`sbc_tap_packets_dropped_total{reason}` and the tap's own
// counter). The call's packet is relayed whatever happens to its copies: a tap never
// waits and never holds call media. RTCP is not copied.

/// Most taps on one call: a few recorders (compliance, analytics, a live monitor). Each
/// tap costs a copy, maybe an SRTP protect and a send per packet on the call's worker.
pub const MAX_TAPS_PER_CALL: usize = 4;

/// Most recorded streams (SIPREC, `sbc_core::recording`) on one call, counted apart from
/// [`MAX_TAPS_PER_CALL`] so API taps never crowd out compliance recording: one per leg,
/// times two for the overlap while a failed SRS's session is replaced by the next
/// target's (the old streams are released once the new ones are up).
pub const MAX_RECORDED_STREAMS_PER_CALL: usize = 4;

/// A tap's counters (written by its worker, read by the control side), its stop flag
/// (set by the control side, so no copy leaves after `stop_tap` returns, even before the
/// worker has applied the `RemoveTap` command) and its pause flag (a paused recorded
/// stream makes no copy at all, so its SRTP contexts do not move and a resumed stream
/// never reuses keystream).
#[derive(Debug, Default)]
pub struct TapCounters {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub stopped: AtomicBool,
    pub paused: AtomicBool,
}

/// A recording tap, as its call's worker runs it.
#[derive(Debug)]
pub struct TapSetup {
    pub id: TapId,
    pub legs: TapLegs,
    /// Only this m-line's packets (a recorded stream forks one stream of one leg);
    /// `None`: every stream of the call.
    pub stream: Option<usize>,
    pub destination: SocketAddr,
    /// Non-blocking, never read: its send buffer is the tap's bounded queue.
    pub socket: std::net::UdpSocket,
    /// For an SRTP tap: a context per leg (0: caller, 1: callee), same key.
    pub srtp: Option<[SrtpContext; 2]>,
    pub counters: Arc<TapCounters>,
    /// SSRCs sent per leg, for an SRTP tap (see [`TapSsrcs`]).
    pub ssrcs: [TapSsrcs; 2],
}

/// The SSRCs an SRTP tap has sent for one leg. Both legs' contexts share the tap's key, so
/// the same SSRC and packet index on both legs would encrypt two packets with the same
/// keystream: an SSRC the other leg already uses is refused (counted as an `srtp` drop).
/// As many as an SRTP context takes ([`DEFAULT_MAX_SSRCS`]); fixed size, no allocation.
#[derive(Debug, Clone, Copy)]
pub struct TapSsrcs {
    ssrcs: [u32; DEFAULT_MAX_SSRCS],
    len: usize,
}

impl Default for TapSsrcs {
    fn default() -> Self {
        TapSsrcs {
            ssrcs: [0; DEFAULT_MAX_SSRCS],
            len: 0,
        }
    }
}

impl TapSsrcs {
    fn contains(&self, ssrc: u32) -> bool {
        self.ssrcs[..self.len].contains(&ssrc)
    }

    /// False when full.
    fn insert(&mut self, ssrc: u32) -> bool {
        if self.contains(ssrc) {
            return true;
        }
        match self.ssrcs.get_mut(self.len) {
            Some(slot) => {
                *slot = ssrc;
                self.len += 1;
                true
            }
            None => false,
        }
    }
}

/// Why a tap's copy was dropped: the `reason` label of `sbc_tap_packets_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TapDrop {
    /// The tap socket's send buffer is full (the recorder, or the path to it, is slow).
    QueueFull,
    /// The kernel refused the send (unreachable, refused, ...).
    SendFailed,
    /// The tap's SRTP transform refused (too many SSRCs, an SSRC the other leg uses,
    /// key exhausted).
    Srtp,
}

impl TapDrop {
    const ALL: [TapDrop; 3] = [TapDrop::QueueFull, TapDrop::SendFailed, TapDrop::Srtp];

    fn as_str(self) -> &'static str {
        match self {
            TapDrop::QueueFull => "queue_full",
            TapDrop::SendFailed => "send_failed",
            TapDrop::Srtp => "srtp",
        }
    }
}

struct TapMetrics {
    sent: metrics::Counter,
    dropped: [metrics::Counter; 3],
}

impl TapMetrics {
    fn count_drops(&self, reason: TapDrop, n: usize) {
        // `reason` is one of `TapDrop::ALL`, in that order.
        if let (Some(c), true) = (self.dropped.get(reason as usize), n > 0) {
            c.increment(n as u64);
        }
    }
}

/// Tap copies waiting for their send: [`TAP_SLOTS`] buffers of [`BUF_LEN`] bytes, each
/// holding one copy (clear, or protected under its tap's key) for one tap of the call
/// being drained. Flushed after each received batch, and earlier when full.
struct TapOutbox {
    bufs: Box<[u8]>,
    /// (index of the tap in its call's list, length of the copy).
    items: [(usize, usize); TAP_SLOTS],
    len: usize,
}

/// Tap copies held before a flush: a received batch of [`BATCH`] packets with one tap
/// flushes once; more taps flush when it fills, so a tap's `sendmmsg` never exceeds
/// [`BATCH`]. 32 × 2068 bytes per worker.
const TAP_SLOTS: usize = BATCH;

impl TapOutbox {
    fn new() -> TapOutbox {
        TapOutbox {
            bufs: vec![0u8; TAP_SLOTS * BUF_LEN].into_boxed_slice(),
            items: [(0, 0); TAP_SLOTS],
            len: 0,
        }
    }

    fn slot(&self, i: usize) -> &[u8] {
        self.bufs.get(i * BUF_LEN..(i + 1) * BUF_LEN).unwrap_or(&[])
    }

    /// The next free buffer; `None` when full.
    fn next_mut(&mut self) -> Option<&mut [u8]> {
        let i = self.len;
        if i >= TAP_SLOTS {
            return None;
        }
        self.bufs.get_mut(i * BUF_LEN..(i + 1) * BUF_LEN)
    }

    /// Sends every held copy, one `sendmmsg` per tap, and counts what happened. A tap
    /// stopped (or paused) since its copies were made sends nothing (so none leaves after
    /// `stop_tap` returned) and counts nothing.
    fn flush(&mut self, taps: &mut [TapSetup], metrics: &TapMetrics) {
        if self.len == 0 {
            return;
        }
        for (t, tap) in taps.iter_mut().enumerate() {
            let held = self.items[..self.len].iter().any(|(i, _)| *i == t);
            let off = tap.counters.stopped.load(Ordering::Acquire)
                || tap.counters.paused.load(Ordering::Acquire);
            if !held || off {
                continue;
            }
            let copies = self.items[..self.len]
                .iter()
                .enumerate()
                .filter(|(_, (i, _))| *i == t)
                .map(|(k, &(_, len))| (self.slot(k).get(..len).unwrap_or(&[]), tap.destination));
            let done = send_batch(tap.socket.as_fd(), copies);
            if done.sent > 0 {
                tap.counters
                    .sent
                    .fetch_add(done.sent as u64, Ordering::Relaxed);
                metrics.sent.increment(done.sent as u64);
            }
            if done.failed > 0 {
                tap.counters
                    .dropped
                    .fetch_add(done.failed as u64, Ordering::Relaxed);
                let full = done.full.min(done.failed);
                metrics.count_drops(TapDrop::QueueFull, full);
                metrics.count_drops(TapDrop::SendFailed, done.failed - full);
            }
        }
        self.len = 0;
    }
}

/// Copies one clear RTP packet received on `leg` of m-line `stream` into `outbox` for
/// each tap that wants it (flushing the outbox first when it is full); a copy an SRTP tap refuses is
/// counted at once.
fn copy_to_taps(
    taps: &mut [TapSetup],
    (stream, leg): (usize, usize),
    clear: &[u8],
    outbox: &mut TapOutbox,
    metrics: &TapMetrics,
) {
    let side = if leg == 0 {
        LegSide::Caller
    } else {
        LegSide::Callee
    };
    for t in 0..taps.len() {
        let Some(tap) = taps.get_mut(t) else {
            break;
        };
        let wanted = tap.legs.includes(side)
            && tap.stream.is_none_or(|s| s == stream)
            && !tap.counters.stopped.load(Ordering::Acquire)
            && !tap.counters.paused.load(Ordering::Acquire);
        if !wanted {
            continue;
        }
        if outbox.len >= TAP_SLOTS {
            outbox.flush(taps, metrics);
        }
        let Some(tap) = taps.get_mut(t) else {
            break;
        };
        let Some(buf) = outbox.next_mut() else {
            break;
        };
        match copy_one(tap, leg, clear, buf) {
            Ok(out_len) => {
                if let Some(item) = outbox.items.get_mut(outbox.len) {
                    *item = (t, out_len);
                    outbox.len += 1;
                }
            }
            Err(r) => {
                tap.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics.count_drops(r, 1);
            }
        }
    }
}

/// One tap's copy of `clear` into `buf`, protected under the tap's key for an SRTP tap:
/// the copy's length.
fn copy_one(
    tap: &mut TapSetup,
    leg: usize,
    clear: &[u8],
    buf: &mut [u8],
) -> Result<usize, TapDrop> {
    let len = clear.len();
    buf.get_mut(..len)
        .ok_or(TapDrop::SendFailed)?
        .copy_from_slice(clear);
    let Some(ctx) = tap.srtp.as_mut().and_then(|c| c.get_mut(leg)) else {
        return Ok(len);
    };
    let ssrc = clear
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or(TapDrop::Srtp)?;
    let [s0, s1] = &mut tap.ssrcs;
    let (mine, other) = if leg == 0 { (s0, s1) } else { (s1, s0) };
    if other.contains(ssrc) || !mine.insert(ssrc) {
        return Err(TapDrop::Srtp);
    }
    ctx.protect_rtp(buf, len).map_err(|_| TapDrop::Srtp)
}

// ---------------------------------------------------------------------------------------
// Worker: sockets and threads.

/// Counters one worker writes and anyone may read (no lock; each worker has its own).
/// Updated once per wake-up that found packets, so they lag the packets by at most one
/// wake-up.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub relayed: AtomicU64,
    pub dropped: [AtomicU64; DropReason::COUNT],
    pub streams: AtomicU64,
}

impl WorkerStats {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }
}

/// Sockets and leg configuration for one stream (one m-line), indexed by leg: 0 is the
/// caller's leg, 1 the callee's.
#[derive(Debug)]
pub struct StreamSetup {
    pub index: usize,
    /// Set when the stream is new to the worker.
    pub sockets: Option<[BoundPair; 2]>,
    pub legs: [LegConfig; 2],
    /// The legs' counters (used when the stream is new to the worker).
    pub counters: [Arc<LegCounters>; 2],
}

/// Control messages to a worker.
#[derive(Debug)]
pub enum Command {
    /// Create or update a call's streams, then add `taps` (a tenant's automatic tap: in
    /// the same command, so it sees the first packet).
    Upsert {
        call: CallRef,
        streams: Vec<StreamSetup>,
        taps: Vec<TapSetup>,
    },
    /// Drop a call and its sockets.
    Remove(CallRef),
    /// Start a recording tap on a call the worker runs (dropped if it runs no such call).
    AddTap { call: CallRef, tap: Box<TapSetup> },
    /// Stop a recording tap.
    RemoveTap { call: CallRef, id: TapId },
    /// Send a tap's copies to a new destination, keeping its SRTP state (an SRS
    /// re-INVITE moved a recorded stream).
    MoveTap {
        call: CallRef,
        id: TapId,
        destination: SocketAddr,
    },
    /// The call belongs to `tenant`, whose media may use `bytes_per_second` on this worker
    /// (its share of the tenant's bandwidth limit).
    Bandwidth {
        call: CallRef,
        tenant: TenantId,
        bytes_per_second: f64,
    },
    /// A call taken over from a dead node (hot standby): its streams, taps and their
    /// SRTP progress, installed in one step so no packet meets a context without it.
    Restore {
        call: CallRef,
        streams: Vec<StreamSetup>,
        taps: Vec<TapSetup>,
        progress: Option<Box<IndexReport>>,
    },
    /// Stop the worker.
    Shutdown,
}

/// What a worker needs from its owner.
pub struct WorkerParams {
    pub media_timeout: Duration,
    pub relatch_after: Duration,
    pub stats: Arc<WorkerStats>,
    /// Pause of a busy worker between two looks at its sockets ([`DEFAULT_BATCH_INTERVAL`];
    /// zero, the default: no pause).
    pub batch_interval: Duration,
    /// Called (off the packet path) when a call timed out; its sockets are closed by then.
    pub on_timeout: Box<dyn Fn(CallRef) + Send>,
    /// Where SRTP progress goes for hot standby (see `relay/indexes.rs`).
    pub indexes: Option<IndexReporter>,
}

impl std::fmt::Debug for WorkerParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerParams")
            .field("media_timeout", &self.media_timeout)
            .field("relatch_after", &self.relatch_after)
            .field("batch_interval", &self.batch_interval)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    call: CallRef,
    stream: usize,
    leg: usize,
    rtcp: bool,
}

#[derive(Debug)]
struct LegIo {
    state: LegState,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    tokens: [Token; 2],
    counters: Arc<LegCounters>,
    track: SeqTrack,
    /// The last RTP sequence number sent to this leg's peer was 0x8000 or above (hot
    /// standby reports the progress when this turns true, before the wrap).
    seq_upper: bool,
    /// The latched RTP peer as last reported to hot standby.
    latch_reported: Option<SocketAddr>,
    // Declared after the sockets: dropped after they close.
    _lease: PortLease,
}

#[derive(Debug)]
struct StreamIo {
    legs: [LegIo; 2],
}

#[derive(Debug)]
struct CallIo {
    streams: Vec<Option<StreamIo>>,
    last_activity: Instant,
    taps: Vec<TapSetup>,
    /// The tenant whose bandwidth bucket this call's packets draw from, if limited.
    tenant: Option<TenantId>,
    /// Its SRTP progress is to be reported at the next tick, and when it last was.
    index_due: bool,
    index_at: Instant,
}

/// A tenant's media bandwidth on one worker: a token bucket of bytes, one second deep.
/// Each worker holds its share of the tenant's limit, so no state is shared across
/// workers on the packet path.
#[derive(Debug)]
pub struct ByteBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    pub fn new(bytes_per_second: f64, now: Instant) -> ByteBucket {
        ByteBucket {
            rate: bytes_per_second,
            tokens: bytes_per_second,
            last: now,
        }
    }

    /// Take `bytes` if they are there.
    pub fn take(&mut self, now: Instant, bytes: usize) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        let b = bytes as f64;
        if self.tokens >= b {
            self.tokens -= b;
            true
        } else {
            false
        }
    }
}

/// A worker's relayed and dropped packets, counted in plain integers on the packet path
/// and published to [`WorkerStats`] and the metrics once per wake-up: two atomic
/// read-modify-writes per packet (stats and metric) become two per wake-up and reason.
#[derive(Debug, Default)]
struct Tally {
    relayed: u64,
    dropped: [u64; DropReason::COUNT],
}

impl Tally {
    fn drop(&mut self, reason: DropReason, n: u64) {
        if let Some(d) = self.dropped.get_mut(reason.index()) {
            *d += n;
        }
    }

    fn publish(&mut self, stats: &WorkerStats, counters: &Counters) {
        if self.relayed > 0 {
            stats.relayed.fetch_add(self.relayed, Ordering::Relaxed);
            counters.relayed.increment(self.relayed);
            self.relayed = 0;
        }
        for ((n, stat), metric) in self
            .dropped
            .iter_mut()
            .zip(&stats.dropped)
            .zip(&counters.dropped)
        {
            if *n > 0 {
                stat.fetch_add(*n, Ordering::Relaxed);
                metric.increment(*n);
                *n = 0;
            }
        }
    }
}

struct Counters {
    relayed: metrics::Counter,
    wakeups: metrics::Counter,
    dropped: [metrics::Counter; DropReason::COUNT],
    taps: TapMetrics,
    index_dropped: metrics::Counter,
}

impl Counters {
    fn register() -> Self {
        Counters {
            relayed: metrics::counter!("sbc_media_packets_relayed_total"),
            wakeups: metrics::counter!("sbc_media_worker_wakeups_total"),
            dropped: DropReason::ALL.map(
                |r| metrics::counter!("sbc_media_packets_dropped_total", "reason" => r.as_str()),
            ),
            taps: TapMetrics {
                sent: metrics::counter!("sbc_tap_packets_sent_total"),
                dropped: TapDrop::ALL.map(
                    |r| metrics::counter!("sbc_tap_packets_dropped_total", "reason" => r.as_str()),
                ),
            },
            index_dropped: indexes::dropped_counter(),
        }
    }
}

/// A running worker's handle.
#[derive(Debug)]
pub struct WorkerHandle {
    pub tx: std::sync::mpsc::Sender<Command>,
    pub waker: Arc<Waker>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl WorkerHandle {
    /// Sends a command and wakes the worker. False when the worker is gone.
    pub fn send(&self, cmd: Command) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        self.waker.wake().is_ok()
    }
}

/// Starts a worker thread. Metric handles are registered here: install the `metrics`
/// recorder before starting the engine.
pub fn spawn_worker(id: usize, params: WorkerParams) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("sbc-media-{id}"))
        .spawn(move || {
            let mut w = Worker {
                poll,
                rx,
                params,
                counters: Counters::register(),
                calls: FxHashMap::default(),
                slots: Vec::new(),
                free_slots: Vec::new(),
                batch: RecvBatch::new(BUF_LEN),
                outboxes: Box::new([Outbox::EMPTY; 3]),
                tap_out: TapOutbox::new(),
                tally: Tally::default(),
                tenant_buckets: HashMap::new(),
                auth_seen: (0, Instant::now()),
                latency: LatencySampler::new(metrics::histogram!(
                    "sbc_media_relay_latency_seconds"
                )),
            };
            w.run();
        })?;
    Ok(WorkerHandle {
        tx,
        waker,
        thread: Some(thread),
    })
}

struct Worker {
    poll: Poll,
    rx: Receiver<Command>,
    params: WorkerParams,
    counters: Counters,
    calls: FxHashMap<CallRef, CallIo>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    /// Receive buffers: [`BATCH`] datagrams, each slot with room for the SRTP trailer.
    batch: RecvBatch,
    /// What one received batch relays, by how it leaves: RTP, RTCP muxed on the RTP
    /// socket, RTCP on the RTCP socket (kept apart so the leg's RTP count is exact).
    outboxes: Box<[Outbox; 3]>,
    /// Where taps' copies are made, protected and held until their `sendmmsg`: the call's
    /// packet in `batch` is untouched.
    tap_out: TapOutbox,
    /// Packets relayed and dropped since the counters were last published.
    tally: Tally,
    /// Bandwidth buckets of the limited tenants this worker relays for.
    tenant_buckets: HashMap<TenantId, ByteBucket>,
    /// SRTP authentication failures seen at the last security check, and when.
    auth_seen: (u64, Instant),
    /// Sampled receive-to-send times.
    latency: LatencySampler,
}

/// SRTP authentication failures on one worker within [`AUTH_WINDOW`] past which a
/// security warning is logged: a few are line noise or a stale key, this many are someone
/// sending forged or mis-keyed media at us.
pub const AUTH_FAILURE_THRESHOLD: u64 = 50;
/// Window of the SRTP authentication-failure check.
pub const AUTH_WINDOW: Duration = Duration::from_secs(10);

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut next_tick = Instant::now() + TICK;
        let pace = self.params.batch_interval;
        let mut busy = false;
        loop {
            let wait = if busy {
                // Packets came last time: let more gather, then take them all at once.
                std::thread::sleep(pace);
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "media worker poll failed; worker stops");
                    return;
                }
            }
            let now = Instant::now();
            // Commands first: a tap started (or stopped) before a packet arrived applies to
            // that packet. A token freed by a command and reused meanwhile only costs one
            // empty read of the new socket.
            if !self.commands(now) {
                return;
            }
            let mut sockets = 0usize;
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                sockets += 1;
                self.drain_socket(ev.token(), now);
            }
            if sockets > 0 {
                self.counters.wakeups.increment(1);
                self.tally.publish(&self.params.stats, &self.counters);
            }
            busy = sockets > 0 && !pace.is_zero();
            if now >= next_tick {
                self.check_timeouts(now);
                self.check_auth_failures(now);
                self.latency.flush();
                self.report_indexes(now);
                next_tick = now + TICK;
            }
        }
    }

    /// Applies queued commands; false on shutdown.
    fn commands(&mut self, now: Instant) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Upsert {
                    call,
                    streams,
                    taps,
                }) => self.install(call, (streams, taps), None, now),
                Ok(Command::Remove(call)) => {
                    self.remove(call);
                }
                Ok(Command::Restore {
                    call,
                    streams,
                    taps,
                    progress,
                }) => self.install(call, (streams, taps), progress, now),
                Ok(Command::AddTap { call, tap }) => self.add_tap(call, *tap),
                Ok(Command::RemoveTap { call, id }) => {
                    if let Some(c) = self.calls.get_mut(&call) {
                        c.taps.retain(|t| t.id != id);
                    }
                }
                Ok(Command::MoveTap {
                    call,
                    id,
                    destination,
                }) => {
                    let tap = self
                        .calls
                        .get_mut(&call)
                        .and_then(|c| c.taps.iter_mut().find(|t| t.id == id));
                    if let Some(t) = tap {
                        t.destination = destination;
                    }
                }
                Ok(Command::Bandwidth {
                    call,
                    tenant,
                    bytes_per_second,
                }) => {
                    if let Some(c) = self.calls.get_mut(&call) {
                        match self.tenant_buckets.get_mut(&tenant) {
                            Some(b) => b.rate = bytes_per_second,
                            None => {
                                self.tenant_buckets
                                    .insert(tenant.clone(), ByteBucket::new(bytes_per_second, now));
                            }
                        }
                        c.tenant = Some(tenant);
                    }
                }
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                    let calls: Vec<CallRef> = self.calls.keys().copied().collect();
                    for c in calls {
                        self.remove(c);
                    }
                    return false;
                }
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    /// Streams, then taps, then (for a restored call) its SRTP progress: one step.
    fn install(
        &mut self,
        call: CallRef,
        (streams, taps): (Vec<StreamSetup>, Vec<TapSetup>),
        progress: Option<Box<IndexReport>>,
        now: Instant,
    ) {
        self.upsert(call, streams, now);
        for tap in taps {
            self.add_tap(call, tap);
        }
        if let Some(p) = progress {
            self.apply_progress(&p);
        }
    }

    fn add_tap(&mut self, call: CallRef, tap: TapSetup) {
        match self.calls.get_mut(&call) {
            // The control side bounds taps and recorded streams apart; this is the sum.
            Some(c) if c.taps.len() < MAX_TAPS_PER_CALL + MAX_RECORDED_STREAMS_PER_CALL => {
                c.taps.push(tap)
            }
            Some(_) => tracing::warn!(%call, tap = %tap.id, "tap refused: call has too many"),
            None => tracing::debug!(%call, tap = %tap.id, "tap for a call that has ended"),
        }
    }

    fn alloc_slot(&mut self, slot: Slot) -> Token {
        if let Some(i) = self.free_slots.pop() {
            self.slots[i] = Some(slot);
            Token(i)
        } else {
            self.slots.push(Some(slot));
            Token(self.slots.len() - 1)
        }
    }

    fn leg_io(
        &mut self,
        call: CallRef,
        stream: usize,
        leg: usize,
        pair: BoundPair,
        cfg: &LegConfig,
        counters: Arc<LegCounters>,
    ) -> io::Result<LegIo> {
        let state = LegState::new(cfg).map_err(|e| io::Error::other(e.to_string()))?;
        let BoundPair { rtp, rtcp, lease } = pair;
        let mut rtp = UdpSocket::from_std(rtp);
        let mut rtcp = UdpSocket::from_std(rtcp);
        let t_rtp = self.alloc_slot(Slot {
            call,
            stream,
            leg,
            rtcp: false,
        });
        let t_rtcp = self.alloc_slot(Slot {
            call,
            stream,
            leg,
            rtcp: true,
        });
        let reg = self.poll.registry();
        let res = reg
            .register(&mut rtp, t_rtp, Interest::READABLE)
            .and_then(|()| reg.register(&mut rtcp, t_rtcp, Interest::READABLE));
        if let Err(e) = res {
            self.free_slot(t_rtp);
            self.free_slot(t_rtcp);
            return Err(e);
        }
        Ok(LegIo {
            state,
            rtp,
            rtcp,
            tokens: [t_rtp, t_rtcp],
            counters,
            track: SeqTrack::default(),
            seq_upper: false,
            latch_reported: None,
            _lease: lease,
        })
    }

    fn free_slot(&mut self, t: Token) {
        if let Some(s) = self.slots.get_mut(t.0) {
            if s.take().is_some() {
                self.free_slots.push(t.0);
            }
        }
    }

    fn upsert(&mut self, call: CallRef, streams: Vec<StreamSetup>, now: Instant) {
        for setup in streams {
            let StreamSetup {
                index,
                sockets,
                legs,
                counters: [c0, c1],
            } = setup;
            let existing = self.calls.get_mut(&call).and_then(|c| {
                // New keys, new contexts: their progress is reported at the next tick.
                c.index_due = true;
                c.streams.get_mut(index).and_then(Option::as_mut)
            });
            if let Some(stream) = existing {
                for (io, cfg) in stream.legs.iter_mut().zip(legs.iter()) {
                    if let Err(e) = io.state.update(cfg) {
                        tracing::warn!(%call, stream = index, error = %e, "media re-key refused");
                    }
                }
                continue;
            }
            let Some([p0, p1]) = sockets else {
                // The stream is gone (timed out meanwhile): nothing to update.
                continue;
            };
            let made = self
                .leg_io(call, index, 0, p0, &legs[0], c0)
                .and_then(|l0| match self.leg_io(call, index, 1, p1, &legs[1], c1) {
                    Ok(l1) => Ok([l0, l1]),
                    Err(e) => {
                        self.release_leg(l0);
                        Err(e)
                    }
                });
            match made {
                Ok(legs) => {
                    let c = self.calls.entry(call).or_insert_with(|| CallIo {
                        streams: Vec::new(),
                        last_activity: now,
                        taps: Vec::new(),
                        tenant: None,
                        index_due: true,
                        index_at: now,
                    });
                    if c.streams.len() <= index {
                        c.streams.resize_with(index + 1, || None);
                    }
                    c.streams[index] = Some(StreamIo { legs });
                    self.params.stats.streams.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(%call, stream = index, error = %e, "media stream setup failed")
                }
            }
        }
    }

    fn release_leg(&mut self, mut leg: LegIo) {
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut leg.rtp);
        let _ = reg.deregister(&mut leg.rtcp);
        for t in leg.tokens {
            self.free_slot(t);
        }
    }

    fn remove(&mut self, call: CallRef) -> bool {
        let Some(c) = self.calls.remove(&call) else {
            return false;
        };
        for s in c.streams.into_iter().flatten() {
            self.params.stats.streams.fetch_sub(1, Ordering::Relaxed);
            for leg in s.legs {
                self.release_leg(leg);
            }
        }
        true
    }

    /// Warn (stable `event` field) when SRTP authentication failures pass the threshold.
    fn check_auth_failures(&mut self, now: Instant) {
        let (seen, since) = self.auth_seen;
        if now.saturating_duration_since(since) < AUTH_WINDOW {
            return;
        }
        let total = self.params.stats.dropped(DropReason::AuthFailed);
        let new = total.saturating_sub(seen);
        if new >= AUTH_FAILURE_THRESHOLD {
            tracing::warn!(
                event = "srtp_auth_failures",
                failures = new,
                window_secs = AUTH_WINDOW.as_secs(),
                "SRTP authentication failures over the threshold: forged or mis-keyed media"
            );
        }
        self.auth_seen = (total, now);
    }

    fn check_timeouts(&mut self, now: Instant) {
        let timeout = self.params.media_timeout;
        let expired: Vec<CallRef> = self
            .calls
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_activity) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for call in expired {
            if self.remove(call) {
                tracing::info!(%call, "media timeout");
                (self.params.on_timeout)(call);
            }
        }
    }

    /// Reads every pending datagram of one socket (mio readiness is edge-triggered), a
    /// batch per `recvmmsg`, and sends what it relays with one `sendmmsg` per outgoing
    /// socket and kind, then the taps' copies with one `sendmmsg` per tap.
    fn drain_socket(&mut self, token: Token, now: Instant) {
        let Some(Some(slot)) = self.slots.get(token.0).copied() else {
            return;
        };
        let relatch_after = self.params.relatch_after;
        let Worker {
            calls,
            batch: rx,
            outboxes: out,
            tap_out,
            counters,
            tenant_buckets,
            latency,
            tally,
            ..
        } = self;
        let Some(call) = calls.get_mut(&slot.call) else {
            return;
        };
        let Some(Some(stream)) = call.streams.get_mut(slot.stream) else {
            return;
        };
        // One look-up per socket, not per packet: every packet here is this call's.
        let mut bucket = call.tenant.as_ref().and_then(|t| tenant_buckets.get_mut(t));
        let taps = &mut call.taps;
        let [l0, l1] = &mut stream.legs;
        let (inb, outb) = if slot.leg == 0 { (l0, l1) } else { (l1, l0) };
        let mut errors = 0u32;
        loop {
            let sock = if slot.rtcp { &inb.rtcp } else { &inb.rtp };
            let n = match rx.recv(sock.as_fd(), MAX_DATAGRAM) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here on Linux (ECONNREFUSED) and clear on read; keep
                // reading, but give up on a socket that keeps failing.
                Err(_) => {
                    errors += 1;
                    if errors > MAX_RECV_ERRORS {
                        return;
                    }
                    continue;
                }
            };
            // Timed from here (the batch is in hand) to its last send.
            let sampled = latency.due(n).then(Instant::now);
            for o in out.iter_mut() {
                o.len = 0;
            }
            let mut active = false;
            for i in 0..n {
                let len = rx.len(i);
                let result = match rx.source(i) {
                    _ if rx.truncated(i) => Err(DropReason::Truncated),
                    None => Err(DropReason::InvalidPacket),
                    Some(src) => {
                        let kind = if slot.rtcp {
                            PacketKind::Rtcp
                        } else {
                            PacketKind::classify_muxed(rx.packet(i))
                        };
                        let (track, leg_counters) = (&mut inb.track, &inb.counters);
                        let admit = |kind, clear: &[u8]| {
                            if kind == PacketKind::Rtp {
                                track.on_rtp(clear, leg_counters);
                            }
                            // Charged at the size received, before anything is copied.
                            if let Some(b) = bucket.as_deref_mut() {
                                if !b.take(now, len) {
                                    return Err(DropReason::TenantBandwidth);
                                }
                            }
                            if kind == PacketKind::Rtp && !taps.is_empty() {
                                copy_to_taps(
                                    taps,
                                    (slot.stream, slot.leg),
                                    clear,
                                    tap_out,
                                    &counters.taps,
                                );
                            }
                            Ok(())
                        };
                        relay_packet(
                            now,
                            relatch_after,
                            &mut inb.state,
                            &mut outb.state,
                            kind,
                            src,
                            rx.slot_mut(i),
                            len,
                            admit,
                        )
                        .map(|f| (f, kind))
                    }
                };
                match result {
                    Ok((f, kind)) => {
                        active = true;
                        // Hot standby: one bit compared per packet (relay/indexes.rs).
                        let upper = kind == PacketKind::Rtp
                            && rx.slot(i).get(2).is_some_and(|b| b & 0x80 != 0);
                        if upper != outb.seq_upper {
                            outb.seq_upper = upper;
                            call.index_due |= upper;
                        }
                        let which = match (kind, f.via_rtcp_socket) {
                            (PacketKind::Rtp, _) => 0,
                            (PacketKind::Rtcp, false) => 1,
                            (PacketKind::Rtcp, true) => 2,
                        };
                        out[which].push(i, f.len, f.dest);
                    }
                    Err(r) => {
                        active |= r.after_accept();
                        tally.drop(r, 1);
                    }
                }
            }
            if active {
                call.last_activity = now;
            }
            send_outboxes(out, rx, outb, tally);
            if let Some(t0) = sampled.filter(|_| out.iter().any(|o| o.len > 0)) {
                latency.push(t0.elapsed());
            }
            tap_out.flush(taps, &counters.taps);
            // Fewer than a batch: the socket was empty when the call returned.
            if n < BATCH {
                return;
            }
        }
    }
}

/// Sends one received batch's relayed packets, one `sendmmsg` per outbox, from the
/// outbound leg's sockets, and counts them.
fn send_outboxes(out: &[Outbox; 3], rx: &RecvBatch, outb: &LegIo, tally: &mut Tally) {
    for (which, boxed) in out.iter().enumerate() {
        if boxed.len == 0 {
            continue;
        }
        let sock = if which == 2 { &outb.rtcp } else { &outb.rtp };
        let packets = boxed
            .items()
            .iter()
            .map(|&(i, len, dest)| (rx.slot(i).get(..len).unwrap_or(&[]), dest));
        let done = send_batch(sock.as_fd(), packets);
        if which == 0 && done.sent > 0 {
            // This worker is the counter's only writer: a load and a store, no RMW.
            let sent = outb.counters.sent.load(Ordering::Relaxed) + done.sent as u64;
            outb.counters.sent.store(sent, Ordering::Relaxed);
        }
        tally.relayed += done.sent as u64;
        tally.drop(DropReason::SendFailed, done.failed as u64);
    }
}

/// Packets of one received batch leaving by one socket: (slot, length, destination).
#[derive(Clone, Copy)]
struct Outbox {
    items: [(usize, usize, SocketAddr); BATCH],
    len: usize,
}

impl Outbox {
    const EMPTY: Outbox = Outbox {
        items: [(0, 0, NO_ADDR); BATCH],
        len: 0,
    };

    fn push(&mut self, slot: usize, len: usize, dest: SocketAddr) {
        if let Some(e) = self.items.get_mut(self.len) {
            *e = (slot, len, dest);
            self.len += 1;
        }
    }

    fn items(&self) -> &[(usize, usize, SocketAddr)] {
        &self.items[..self.len]
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let calls: Vec<CallRef> = self.calls.keys().copied().collect();
        for c in calls {
            self.remove(c);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// [`relay_packet`] without a tap.
    #[allow(clippy::too_many_arguments)]
    fn relay_no_tap(
        now: Instant,
        relatch_after: Duration,
        inbound: &mut LegState,
        outbound: &mut LegState,
        kind: PacketKind,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Result<Forward, DropReason> {
        relay_packet(
            now,
            relatch_after,
            inbound,
            outbound,
            kind,
            src,
            buf,
            len,
            |_, _| Ok(()),
        )
    }

    fn noop_tap_metrics() -> TapMetrics {
        TapMetrics {
            sent: metrics::Counter::noop(),
            dropped: [
                metrics::Counter::noop(),
                metrics::Counter::noop(),
                metrics::Counter::noop(),
            ],
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn key(b: u8) -> KeySpec {
        KeySpec {
            profile: SrtpProfile::AesCm128HmacSha1_80,
            key: MasterKey::new(&[b; 16], &[b; 14]),
            mki: None,
        }
    }

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x80,
            0,
            (seq >> 8) as u8,
            seq as u8,
            0,
            0,
            0,
            1,
            0,
            0,
            0x12,
            0x34,
        ];
        p.extend_from_slice(payload);
        p
    }

    fn secure_leg(rx: u8, tx: u8, sdp: &str) -> LegState {
        LegState::new(&LegConfig {
            secure: true,
            rx: Some(key(rx)),
            tx: Some(key(tx)),
            rtcp_mux: false,
            sdp_rtp: Some(addr(sdp)),
            sdp_rtcp: None,
        })
        .unwrap()
    }

    fn plain_leg(sdp: &str) -> LegState {
        LegState::new(&LegConfig {
            secure: false,
            rx: None,
            tx: None,
            rtcp_mux: false,
            sdp_rtp: Some(addr(sdp)),
            sdp_rtcp: None,
        })
        .unwrap()
    }

    /// Protects with `k` into a buffer with tailroom.
    fn protect(k: &KeySpec, pkt: &[u8]) -> (Vec<u8>, usize) {
        let mut ctx = k.context().unwrap();
        let mut buf = vec![0u8; BUF_LEN];
        buf[..pkt.len()].copy_from_slice(pkt);
        let n = ctx.protect_rtp(&mut buf, pkt.len()).unwrap();
        (buf, n)
    }

    #[test]
    fn secure_to_plain_and_latching() {
        let now = Instant::now();
        let ra = Duration::from_secs(5);
        let mut a = secure_leg(1, 2, "192.0.2.1:4000");
        let mut b = plain_leg("192.0.2.9:5000");
        let pkt = rtp(1, b"hello");
        let (mut buf, n) = protect(&key(1), &pkt);
        let f = relay_no_tap(
            now,
            ra,
            &mut a,
            &mut b,
            PacketKind::Rtp,
            addr("198.51.100.1:7000"),
            &mut buf,
            n,
        )
        .unwrap();
        assert_eq!(f.dest, addr("192.0.2.9:5000"));
        assert_eq!(&buf[..f.len], &pkt[..]);
        assert_eq!(a.latched_rtp(), Some(addr("198.51.100.1:7000")));

        // Forged packet from elsewhere: auth fails, no latch change.
        let mut forged = protect(&key(1), &rtp(2, b"evil"));
        forged.0[forged.1 - 1] ^= 1;
        let e = relay_no_tap(
            now,
            ra,
            &mut a,
            &mut b,
            PacketKind::Rtp,
            addr("203.0.113.66:1"),
            &mut forged.0,
            forged.1,
        );
        assert_eq!(e, Err(DropReason::AuthFailed));
        assert_eq!(a.latched_rtp(), Some(addr("198.51.100.1:7000")));

        // Authentic packet from a new source while the peer is active: refused.
        let (buf, n) = {
            let mut ctx = key(1).context().unwrap();
            let mut buf = vec![0u8; BUF_LEN];
            let p1 = rtp(1, b"x");
            buf[..p1.len()].copy_from_slice(&p1);
            ctx.protect_rtp(&mut buf, p1.len()).unwrap();
            let p3 = rtp(3, b"moved");
            buf[..p3.len()].copy_from_slice(&p3);
            let n = ctx.protect_rtp(&mut buf, p3.len()).unwrap();
            (buf, n)
        };
        let mut b2 = buf.clone();
        let e = relay_no_tap(
            now + Duration::from_secs(1),
            ra,
            &mut a,
            &mut b,
            PacketKind::Rtp,
            addr("203.0.113.5:9"),
            &mut b2,
            n,
        );
        assert_eq!(e, Err(DropReason::UnexpectedSource));
        // After silence, a newer authentic packet re-latches.
        let (mut buf4, n4) = {
            let mut ctx = key(1).context().unwrap();
            let mut buf = vec![0u8; BUF_LEN];
            let p = rtp(4, b"later");
            buf[..p.len()].copy_from_slice(&p);
            let n = ctx.protect_rtp(&mut buf, p.len()).unwrap();
            (buf, n)
        };
        let f = relay_no_tap(
            now + Duration::from_secs(7),
            ra,
            &mut a,
            &mut b,
            PacketKind::Rtp,
            addr("203.0.113.5:9"),
            &mut buf4,
            n4,
        )
        .unwrap();
        assert_eq!(&buf4[..f.len], &rtp(4, b"later")[..]);
        assert_eq!(a.latched_rtp(), Some(addr("203.0.113.5:9")));
    }

    #[test]
    fn plain_to_secure_encrypts_with_our_key() {
        let now = Instant::now();
        let ra = Duration::from_secs(5);
        let mut a = plain_leg("192.0.2.9:5000");
        let mut b = secure_leg(3, 4, "192.0.2.1:4000");
        let pkt = rtp(10, b"voice");
        let mut buf = vec![0u8; BUF_LEN];
        buf[..pkt.len()].copy_from_slice(&pkt);
        // From the wrong IP: refused.
        let e = relay_no_tap(
            now,
            ra,
            &mut a,
            &mut b,
            PacketKind::Rtp,
            addr("203.0.113.1:5000"),
            &mut buf,
            pkt.len(),
        );
        assert_eq!(e, Err(DropReason::UnexpectedSource));
        let f = relay_no_tap(
            now,
            ra,
            &mut a,
            &mut b,
            PacketKind::Rtp,
            addr("192.0.2.9:5002"),
            &mut buf,
            pkt.len(),
        )
        .unwrap();
        assert_eq!(f.dest, addr("192.0.2.1:4000"));
        assert_eq!(f.len, pkt.len() + 10);
        let mut rx = key(4).context().unwrap();
        let n = rx.unprotect_rtp(&mut buf[..f.len]).unwrap();
        assert_eq!(&buf[..n], &pkt[..]);
    }

    #[test]
    fn unspecified_plain_latches_first_source_and_rekey_resets_latch() {
        let now = Instant::now();
        let ra = Duration::from_secs(5);
        let mut a = plain_leg("0.0.0.0:5000");
        let mut b = plain_leg("192.0.2.1:4000");
        let pkt = rtp(1, b"a");
        let mut buf = vec![0u8; BUF_LEN];
        buf[..pkt.len()].copy_from_slice(&pkt);
        // Nothing known for a: b->a has no peer yet.
        assert_eq!(
            relay_no_tap(
                now,
                ra,
                &mut b,
                &mut a,
                PacketKind::Rtp,
                addr("192.0.2.1:4000"),
                &mut buf,
                pkt.len()
            ),
            Err(DropReason::NoPeer)
        );
        relay_no_tap(
            now,
            ra,
            &mut a,
            &mut b,
            PacketKind::Rtp,
            addr("198.51.100.4:6000"),
            &mut buf,
            pkt.len(),
        )
        .unwrap();
        assert_eq!(a.latched_rtp(), Some(addr("198.51.100.4:6000")));
        let f = relay_no_tap(
            now,
            ra,
            &mut b,
            &mut a,
            PacketKind::Rtp,
            addr("192.0.2.1:4000"),
            &mut buf,
            pkt.len(),
        )
        .unwrap();
        assert_eq!(f.dest, addr("198.51.100.4:6000"));
        // RTCP goes to the latched IP, RTP port + 1.
        let rtcp = [0x80u8, 200, 0, 1, 0, 0, 0, 1];
        buf[..8].copy_from_slice(&rtcp);
        let f = relay_no_tap(
            now,
            ra,
            &mut b,
            &mut a,
            PacketKind::Rtcp,
            addr("192.0.2.1:4001"),
            &mut buf,
            8,
        )
        .unwrap();
        assert_eq!(f.dest, addr("198.51.100.4:6001"));
        assert!(f.via_rtcp_socket);

        // Same keys keep state; new keys reset the latch.
        let mut s = secure_leg(1, 2, "192.0.2.1:4000");
        let (mut pb, n) = protect(&key(1), &rtp(1, b"z"));
        relay_no_tap(
            now,
            ra,
            &mut s,
            &mut b,
            PacketKind::Rtp,
            addr("198.51.100.1:1"),
            &mut pb,
            n,
        )
        .unwrap();
        let cfg = |rx| LegConfig {
            secure: true,
            rx: Some(key(rx)),
            tx: Some(key(2)),
            rtcp_mux: false,
            sdp_rtp: Some(addr("192.0.2.1:4000")),
            sdp_rtcp: None,
        };
        s.update(&cfg(1)).unwrap();
        assert_eq!(s.latched_rtp(), Some(addr("198.51.100.1:1")));
        // Replay still detected: the context (and its window) was kept.
        let (mut pb2, n2) = protect(&key(1), &rtp(1, b"z"));
        assert_eq!(
            relay_no_tap(
                now,
                ra,
                &mut s,
                &mut b,
                PacketKind::Rtp,
                addr("198.51.100.1:1"),
                &mut pb2,
                n2
            ),
            Err(DropReason::Replayed)
        );
        s.update(&cfg(5)).unwrap();
        assert_eq!(s.latched_rtp(), None);
    }

    #[test]
    fn muxed_rtcp_classification() {
        assert_eq!(PacketKind::classify_muxed(&[0x80, 200]), PacketKind::Rtcp);
        assert_eq!(PacketKind::classify_muxed(&[0x80, 204]), PacketKind::Rtcp);
        assert_eq!(PacketKind::classify_muxed(&[0x80, 0]), PacketKind::Rtp);
        assert_eq!(
            PacketKind::classify_muxed(&[0x80, 0x80 | 96]),
            PacketKind::Rtp
        );
        assert_eq!(PacketKind::classify_muxed(&[0x80]), PacketKind::Rtp);
    }

    #[test]
    fn tap_copies_go_to_matching_taps_and_failures_are_counted() {
        let rec = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rec.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rec.local_addr().unwrap();
        let tap = |id, legs, destination, srtp| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_nonblocking(true).unwrap();
            TapSetup {
                id: TapId(id),
                legs,
                stream: None,
                destination,
                socket,
                srtp,
                counters: Arc::default(),
                ssrcs: Default::default(),
            }
        };
        let k = key(7);
        let mut taps = vec![
            tap(1, TapLegs::Caller, to, None),
            tap(2, TapLegs::Callee, to, None),
            // An IPv4 socket cannot send to an IPv6 address: the send fails, is counted.
            tap(3, TapLegs::Both, addr("[::1]:9"), None),
            tap(
                4,
                TapLegs::Both,
                to,
                Some([k.context().unwrap(), k.context().unwrap()]),
            ),
        ];
        let m = noop_tap_metrics();
        let pkt = rtp(1, b"clear voice");
        let mut outbox = TapOutbox::new();
        copy_to_taps(&mut taps, (0, 0), &pkt, &mut outbox, &m);
        assert_eq!(outbox.len, 3, "copies wait in the outbox until the flush");
        assert!(taps
            .iter()
            .all(|t| t.counters.sent.load(Ordering::Relaxed) == 0));
        outbox.flush(&mut taps, &m);
        assert_eq!(outbox.len, 0);
        let counts: Vec<(u64, u64)> = taps
            .iter()
            .map(|t| {
                (
                    t.counters.sent.load(Ordering::Relaxed),
                    t.counters.dropped.load(Ordering::Relaxed),
                )
            })
            .collect();
        assert_eq!(counts, [(1, 0), (0, 0), (0, 1), (1, 0)]);
        let mut got = [0u8; 2048];
        let (n, _) = rec.recv_from(&mut got).unwrap();
        assert_eq!(&got[..n], &pkt[..], "plain tap: the clear packet");
        let (n, _) = rec.recv_from(&mut got).unwrap();
        assert_eq!(n, pkt.len() + 10, "SRTP tap: an 80-bit tag added");
        let mut rx = k.context().unwrap();
        let n = rx.unprotect_rtp(&mut got[..n]).unwrap();
        assert_eq!(&got[..n], &pkt[..]);

        // The callee leg with the caller's SSRC: refused by the SRTP tap (same key, same
        // SSRC and index would reuse keystream); the plain callee tap still sends it.
        copy_to_taps(&mut taps, (0, 1), &pkt, &mut outbox, &m);
        outbox.flush(&mut taps, &m);
        assert_eq!(taps[1].counters.sent.load(Ordering::Relaxed), 1);
        assert_eq!(taps[3].counters.sent.load(Ordering::Relaxed), 1);
        assert_eq!(taps[3].counters.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn tap_outbox_flushes_when_full_and_a_stopped_tap_sends_nothing() {
        let rec = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rec.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rec.local_addr().unwrap();
        let mut taps: Vec<TapSetup> = (0..3)
            .map(|id| {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.set_nonblocking(true).unwrap();
                TapSetup {
                    id: TapId(id),
                    legs: TapLegs::Both,
                    stream: None,
                    destination: to,
                    socket,
                    srtp: None,
                    counters: Arc::default(),
                    ssrcs: Default::default(),
                }
            })
            .collect();
        let m = noop_tap_metrics();
        let mut outbox = TapOutbox::new();
        // 20 packets × 2 live taps = 40 copies: more than the outbox holds.
        taps[2].counters.stopped.store(true, Ordering::Release);
        for seq in 0..20u16 {
            copy_to_taps(&mut taps, (0, 0), &rtp(seq, b"v"), &mut outbox, &m);
        }
        // Stopped between its copies and their send: none of them leaves.
        taps[1].counters.stopped.store(true, Ordering::Release);
        outbox.flush(&mut taps, &m);
        let sent: Vec<u64> = taps
            .iter()
            .map(|t| t.counters.sent.load(Ordering::Relaxed))
            .collect();
        // The outbox filled at the 17th packet (32 copies) and was flushed with both taps
        // live; tap 1's last 4 copies were held when it stopped.
        assert_eq!(sent, [20, 16, 0]);
        let mut got = [0u8; 64];
        let mut n = 0;
        while rec.recv_from(&mut got).is_ok() {
            n += 1;
            if n == 36 {
                break;
            }
        }
        assert_eq!(n, 36);
    }

    #[test]
    fn recorded_stream_copies_one_m_line_of_one_leg_and_nothing_while_paused() {
        let rec = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rec.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let k = key(9);
        let mut taps = vec![TapSetup {
            id: TapId(1),
            legs: TapLegs::Callee,
            stream: Some(1),
            destination: rec.local_addr().unwrap(),
            socket,
            srtp: Some([k.context().unwrap(), k.context().unwrap()]),
            counters: Arc::default(),
            ssrcs: Default::default(),
        }];
        let m = noop_tap_metrics();
        let mut outbox = TapOutbox::new();
        let sent = |t: &[TapSetup]| t[0].counters.sent.load(Ordering::Relaxed);
        // Other leg, other m-line: not copied.
        copy_to_taps(&mut taps, (1, 0), &rtp(1, b"a"), &mut outbox, &m);
        outbox.flush(&mut taps, &m);
        copy_to_taps(&mut taps, (0, 1), &rtp(1, b"b"), &mut outbox, &m);
        outbox.flush(&mut taps, &m);
        assert_eq!(sent(&taps), 0);
        copy_to_taps(&mut taps, (1, 1), &rtp(1, b"c"), &mut outbox, &m);
        outbox.flush(&mut taps, &m);
        assert_eq!(sent(&taps), 1);
        let mut rx = k.context().unwrap();
        let mut got = [0u8; 2048];
        let (n, _) = rec.recv_from(&mut got).unwrap();
        let n = rx.unprotect_rtp(&mut got[..n]).unwrap();
        assert_eq!(&got[..n], &rtp(1, b"c")[..]);
        // Paused: no copy, no count, the SRTP context untouched.
        taps[0].counters.paused.store(true, Ordering::Release);
        copy_to_taps(&mut taps, (1, 1), &rtp(2, b"d"), &mut outbox, &m);
        outbox.flush(&mut taps, &m);
        assert_eq!(sent(&taps), 1);
        assert_eq!(taps[0].counters.dropped.load(Ordering::Relaxed), 0);
        assert!(rec.recv_from(&mut got).is_err(), "nothing while paused");
        taps[0].counters.paused.store(false, Ordering::Release);
        copy_to_taps(&mut taps, (1, 1), &rtp(3, b"e"), &mut outbox, &m);
        outbox.flush(&mut taps, &m);
        let (n, _) = rec.recv_from(&mut got).unwrap();
        let n = rx.unprotect_rtp(&mut got[..n]).unwrap();
        assert_eq!(&got[..n], &rtp(3, b"e")[..]);
    }

    #[test]
    fn sequence_tracking_counts_received_and_lost_across_wrap_reorder_and_ssrc_change() {
        let c = LegCounters::default();
        let mut t = SeqTrack::default();
        let pkt = |ssrc: u32, seq: u16| {
            let mut p = rtp(seq, b"x");
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            p
        };
        let read = |c: &LegCounters| {
            (
                c.received.load(Ordering::Relaxed),
                c.lost.load(Ordering::Relaxed),
            )
        };
        // 65533..=65535, 0, 2 (1 missing), across the wrap.
        for seq in [65533, 65534, 65535, 0, 2] {
            t.on_rtp(&pkt(7, seq), &c);
        }
        assert_eq!(read(&c), (5, 1));
        // The late packet 1 fills the gap.
        t.on_rtp(&pkt(7, 1), &c);
        assert_eq!(read(&c), (6, 0));
        // A jump of 10 loses 9.
        t.on_rtp(&pkt(7, 12), &c);
        assert_eq!(read(&c), (7, 9));
        // A new SSRC starts over and keeps the old losses.
        for seq in [100, 101, 103] {
            t.on_rtp(&pkt(9, seq), &c);
        }
        assert_eq!(read(&c), (10, 10));
        // The same SSRC jumping 20000 ahead restarted its sequence: no 20000 lost.
        for seq in [20103, 20104] {
            t.on_rtp(&pkt(9, seq), &c);
        }
        assert_eq!(read(&c), (12, 10));
        // Too short to be RTP: ignored.
        t.on_rtp(&[0x80, 0, 0, 1], &c);
        assert_eq!(read(&c), (12, 10));
    }

    #[test]
    fn catalog_lists_the_drop_reasons() {
        let drops: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(drops, sbc_core::metrics_catalog::MEDIA_DROPS);
        let taps: Vec<&str> = TapDrop::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(taps, sbc_core::metrics_catalog::TAP_DROPS);
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
