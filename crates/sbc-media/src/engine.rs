//! The media engine: [`MediaControl`] for the signaling side, on top of the SDP rewriter,
//! the port pool and the relay workers.
//!
//! Owns: per-call control state (ports, keys, the last offer), offer/answer negotiation
//! per leg policy, and the workers' lifecycle. Offer and answer run on the caller's
//! thread: they parse, allocate and bind ports, and return the rewritten SDP at once;
//! the sockets and keys go to the call's worker over a channel when the answer commits
//! them. The control lock is never taken on the packet path (only when a worker reports
//! a media timeout).
//!
//! Negotiation, per m-line, with `S` the offering leg and `T` the other one:
//! - an audio/video RTP m-line with a port is relayed; anything else is disabled (port 0);
//! - from `S`: RTP/SAVP(F) needs an `a=crypto` whose suite `S`'s policy allows (the first
//!   such line in offer order is the one we answer); RTP/AVP(F) is refused when `S`'s
//!   policy requires SRTP, and SAVP is refused on a plain-RTP leg;
//! - to `T`: SAVP with one fresh key per suite `T`'s policy lists (preference order),
//!   or AVP for a plain leg;
//! - from `T`'s answer: its `a=crypto` must carry the tag and suite of one we offered;
//! - an offer (or answer) whose m-lines are all disabled is refused (488).
//!
//! Our keys are kept per stream, leg and suite for the call's life, so a re-offer that
//! changes nothing re-sends the same keys and the workers keep their SRTP state.
//!
//! Recording taps ([`TapControl`]): the control side makes the tap's socket and fresh key,
//! records the tap (for listing, ownership and counters) and hands the socket and SRTP
//! contexts to the call's worker, which copies clear RTP to it (see `relay.rs`). A call's
//! taps end with the call: on `delete` and on media timeout. A tenant's automatic tap
//! (`MediaPolicy::record`) is started the same way when the first answer commits the
//! call's streams, queued right behind them so it sees the first packet.
//!
//! Recorded streams ([`RecordingMedia`], SIPREC): a tap of one m-line (the call's first
//! audio stream) of one leg, made in two steps because the recording client must offer
//! the fork's address and key before the recording server answers with a destination.
//! `prepare_stream` binds the fork's socket on the media bind address (any port, never
//! connected) and makes its key; the set-up fork is *parked* in the control state. The
//! first `start_stream` ships it to the call's worker, or, when the call's first answer
//! has not yet committed its streams, leaves it parked with its destination so that
//! answer ships it in the same `Upsert` as the streams. Later `start_stream` calls move
//! the destination (`Command::MoveTap`, SRTP state kept); pause flips the flag the worker
//! checks before copying. Recorded streams have their own per-call bound
//! ([`MAX_RECORDED_STREAMS_PER_CALL`]), are listed among the call's taps once started
//! (`TapStatus::recording`), are not stopped by `stop_tap` (the recording client owns
//! them), and end with the call like every tap, prepared or started.
//!
//! Hot standby (issue #16): the call's replicated parts and its restore on another node
//! are in `engine/standby.rs`; this file only calls `replicate` where the state changes.

mod standby;
mod tap_parts;

use tap_parts::{fork_socket, take_tap, tap_key, tap_profile, tap_socket};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use sbc_core::media::{
    CallRef, LegPolicy, LegSide, MediaControl, MediaError, MediaEvent, MediaPolicy, SrtpMode,
};
use sbc_core::recording::{PreparedStream, RecordingMedia, RtpFormat};
use sbc_core::registry::MediaCounters;
use sbc_core::tap::{
    TapControl, TapError, TapId, TapInfo, TapLegs, TapOwner, TapSpec, TapStatus, TapTransport,
};
use sbc_core::tenant::TenantId;
use zeroize::Zeroizing;

use crate::ports::{self, BindError, BoundPair, PortPool, PortRangeError, SharedPortPool};
use crate::relay::{
    spawn_worker, Command, DropReason, KeySpec, LegConfig, LegCounters, StreamSetup, TapCounters,
    TapSetup, WorkerHandle, WorkerParams, WorkerStats, DEFAULT_BATCH_INTERVAL,
    MAX_RECORDED_STREAMS_PER_CALL, MAX_TAPS_PER_CALL,
};
use crate::sdp::{self, CryptoOut, MediaRewrite, Rewrite, RtpProto, SdpError, SessionDescription};
use crate::srtp::{MasterKey, SrtpContext, SrtpProfile};

/// Default media timeout: no RTP/RTCP either way for this long ends the call.
pub const DEFAULT_MEDIA_TIMEOUT: Duration = Duration::from_secs(60);
/// Default silence of the latched peer before another authenticated source takes over.
pub const DEFAULT_RELATCH_AFTER: Duration = Duration::from_secs(5);
/// Default bound on m-lines per SDP: audio + video + a few extra streams.
pub const DEFAULT_MAX_STREAMS: usize = 8;

/// Media settings.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// Address the media sockets bind to.
    pub bind_address: IpAddr,
    /// Address written in SDP `c=` (the public address when behind 1:1 NAT).
    pub advertised_address: IpAddr,
    /// First port of the range; must be even.
    pub port_min: u16,
    /// Last port of the range (inclusive).
    pub port_max: u16,
    /// No packets either way for this long: [`MediaEvent::Timeout`] and ports freed.
    pub media_timeout: Duration,
    /// Silence of the latched peer before another authenticated source may take over.
    pub relatch_after: Duration,
    /// Most m-lines per SDP; more is refused (488).
    pub max_streams: usize,
    /// Relay worker threads.
    pub workers: usize,
    /// Pause of a busy worker between looks at its sockets (see [`crate::relay`]).
    pub batch_interval: Duration,
    /// Bind with `IP_FREEBIND`: `bind_address` may be a virtual IP not held yet.
    pub freebind: bool,
}

impl MediaSettings {
    /// Settings with the defaults for everything but addresses and ports.
    pub fn new(
        bind_address: IpAddr,
        advertised_address: IpAddr,
        port_min: u16,
        port_max: u16,
    ) -> Self {
        MediaSettings {
            bind_address,
            advertised_address,
            port_min,
            port_max,
            media_timeout: DEFAULT_MEDIA_TIMEOUT,
            relatch_after: DEFAULT_RELATCH_AFTER,
            max_streams: DEFAULT_MAX_STREAMS,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch_interval: DEFAULT_BATCH_INTERVAL,
            freebind: false,
        }
    }
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaStartError {
    #[error("invalid media port range: {0}")]
    PortRange(#[from] PortRangeError),
    #[error("invalid media settings: {0}")]
    Invalid(&'static str),
    #[error("cannot start media worker: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters and gauges of the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Calls with media state (offered or answered).
    pub active_calls: usize,
    /// Streams running in the workers.
    pub active_streams: usize,
    /// UDP ports held (two per leg per stream).
    pub ports_in_use: usize,
    pub packets_relayed: u64,
    /// Packets dropped because SRTP/SRTCP authentication failed.
    pub packets_dropped_auth: u64,
    /// Packets dropped for any reason.
    pub packets_dropped_total: u64,
    /// Per-reason drop counts, as `(reason label, count)`.
    pub dropped_by_reason: Vec<(&'static str, u64)>,
    /// Streams each worker runs (its load share).
    pub streams_per_worker: Vec<usize>,
}

fn idx(side: LegSide) -> usize {
    match side {
        LegSide::Caller => 0,
        LegSide::Callee => 1,
    }
}

/// What was decided for one m-line of the last offer.
#[derive(Debug)]
struct PendingMedia {
    /// The offerer's protocol (our answer to it uses the same).
    from_proto: RtpProto,
    /// The offerer's chosen `a=crypto` (tag and key), for SAVP.
    from_crypto: Option<(u32, KeySpec)>,
    from_mux: bool,
    from_sdp_rtp: Option<SocketAddr>,
    from_sdp_rtcp: Option<SocketAddr>,
    /// SRTP toward the other leg.
    to_secure: bool,
    /// What we offered the other leg.
    offered: Vec<CryptoOut>,
}

#[derive(Debug)]
struct Pending {
    from: LegSide,
    policy: MediaPolicy,
    /// One per m-line; `None` for disabled ones.
    media: Vec<Option<PendingMedia>>,
}

#[derive(Debug, Default)]
struct StreamCtl {
    /// Our RTP port per leg (0: caller, 1: callee).
    ports: [u16; 2],
    /// Bound sockets not yet handed to the worker.
    sockets: Option<[BoundPair; 2]>,
    /// Our keys per leg, per suite: stable for the call's life.
    our_keys: [Vec<(SrtpProfile, MasterKey)>; 2],
    /// The worker runs this stream.
    committed: bool,
    /// Per-leg packet counters, written by the worker.
    counters: [Arc<LegCounters>; 2],
    /// What the last answer committed (hot standby replicates it).
    legs: Option<[LegConfig; 2]>,
}

#[derive(Debug, Default)]
struct OriginState {
    session_id: u64,
    version: u64,
    last: Option<Vec<u8>>,
}

#[derive(Debug)]
struct CallCtl {
    tenant: TenantId,
    worker: usize,
    streams: Vec<Option<StreamCtl>>,
    pending: Option<Pending>,
    origin: [OriginState; 2],
    /// The first offer's first relayed codec (name, clock rate), for tap consumers.
    format: Option<(String, u32)>,
    /// The tenant's automatic tap, started when the first answer commits the streams.
    record: Option<TapSpec>,
    /// The m-line recorded streams fork: the first relayed audio one (else the first
    /// relayed one), fixed by the first offer (m-line positions never change, RFC 3264 §8).
    recorded_line: Option<usize>,
    /// That m-line's payload formats per leg, from the leg's last offer or answer.
    formats: [Vec<RtpFormat>; 2],
    /// The tenant's media bandwidth limit (kbit/s, 0: none), from the first offer.
    bandwidth_kbps: u32,
}

type CallMap = Arc<Mutex<HashMap<CallRef, CallCtl>>>;

/// Most taps on the whole gateway: each holds a socket (a file descriptor) and costs its
/// worker a copy and a send per packet; 4096 is far above any recording deployment's need
/// and far below the default descriptor limit.
pub const MAX_TAPS: usize = 4096;

/// A tap as the control side knows it; the worker holds the socket and SRTP state.
#[derive(Debug)]
struct TapCtl {
    call: CallRef,
    tenant: TenantId,
    spec: TapSpec,
    counters: Arc<TapCounters>,
    /// Set for a recorded stream (SIPREC).
    recorded: Option<RecordedCtl>,
    /// An SRTP tap's key (hot standby replicates it as a secret).
    key: Option<MasterKey>,
}

/// A recorded stream's control state.
#[derive(Debug)]
struct RecordedCtl {
    /// The fork while it is not in the worker: prepared, or started before the call's
    /// first answer (then shipped by that answer).
    parked: Option<Box<TapSetup>>,
    /// `start_stream` was called: `spec.destination` is the SRS's address.
    started: bool,
    /// The fork socket's address (for the address family check on start).
    local: SocketAddr,
}

type TapMap = Arc<Mutex<HashMap<TapId, TapCtl>>>;

/// Lock order: the call map first, then this one (never the other way round).
fn lock_taps(taps: &TapMap) -> MutexGuard<'_, HashMap<TapId, TapCtl>> {
    // Updated in whole steps; a poisoned lock is used as is (see `lock_calls`).
    taps.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_calls(calls: &CallMap) -> MutexGuard<'_, HashMap<CallRef, CallCtl>> {
    // Control state is updated in whole steps under the lock; a panic elsewhere does not
    // leave it half-written, so a poisoned lock is used as is.
    calls.lock().unwrap_or_else(|e| e.into_inner())
}

/// Media events on their way to signaling: pushed to the sink once one is set, queued
/// for `poll_events` until then.
#[derive(Default)]
struct EventQueue {
    queued: Vec<MediaEvent>,
    sink: Option<sbc_core::media::MediaEventSink>,
}

impl EventQueue {
    fn push(&mut self, event: MediaEvent) {
        match &self.sink {
            Some(sink) => sink(event),
            None => self.queued.push(event),
        }
    }
}

impl std::fmt::Debug for EventQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventQueue")
            .field("queued", &self.queued.len())
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

#[derive(Debug)]
struct Inner {
    settings: MediaSettings,
    pool: SharedPortPool,
    calls: CallMap,
    taps: TapMap,
    events: Arc<Mutex<EventQueue>>,
    workers: Vec<WorkerHandle>,
    stats: Vec<Arc<WorkerStats>>,
    rng: SystemRandom,
    /// Round-robin worker choice for new calls (call numbers come from signaling and need
    /// not be spread: the SIP side's are all even).
    next_worker: AtomicUsize,
    /// Tenants whose `sbc_tenant_media_streams` was last published non-zero (so a tenant
    /// whose last stream ended is set back to 0).
    published: Mutex<Vec<TenantId>>,
    /// Hot standby: the replica sink and the workers' index reports.
    standby: standby::Standby,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for w in &self.workers {
            w.send(Command::Shutdown);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// The media engine. Cheap to clone (a handle); the workers stop when the last handle is
/// dropped or on [`MediaEngine::shutdown`].
#[derive(Debug, Clone)]
pub struct MediaEngine {
    inner: Arc<Inner>,
}

/// Upper bound on workers: one per core is the design; 256 catches a typo.
const MAX_WORKERS: usize = 256;

impl MediaEngine {
    /// Validates the settings and starts the workers. Install the `metrics` recorder
    /// before this: the workers register their counters at start.
    pub fn start(settings: MediaSettings) -> Result<MediaEngine, MediaStartError> {
        let pool = PortPool::new(settings.port_min, settings.port_max)?;
        if settings.workers == 0 || settings.workers > MAX_WORKERS {
            return Err(MediaStartError::Invalid("workers must be 1..=256"));
        }
        if settings.max_streams == 0 || settings.max_streams > sdp::MAX_MEDIA_LINES {
            return Err(MediaStartError::Invalid("max_streams must be 1..=64"));
        }
        if settings.media_timeout.is_zero() {
            return Err(MediaStartError::Invalid("media_timeout must not be zero"));
        }
        if settings.advertised_address.is_unspecified() {
            return Err(MediaStartError::Invalid(
                "advertised_address must be a concrete address",
            ));
        }
        let pool: SharedPortPool = Arc::new(Mutex::new(pool));
        // Fail at start, not on the first call, when the bind address is not ours.
        if let Err(e) = ports::bind_pair_on(&pool, settings.bind_address, settings.freebind) {
            tracing::error!(error = %e, address = %settings.bind_address, "media sockets do not bind");
            return Err(MediaStartError::Invalid(
                "cannot bind media sockets on bind_address in the port range",
            ));
        }
        let calls: CallMap = Arc::new(Mutex::new(HashMap::new()));
        let taps: TapMap = Arc::new(Mutex::new(HashMap::new()));
        let events = Arc::new(Mutex::new(EventQueue::default()));
        let (standby, reporter) = standby::Standby::new();
        let mut workers = Vec::with_capacity(settings.workers);
        let mut stats = Vec::with_capacity(settings.workers);
        for id in 0..settings.workers {
            let st = Arc::new(WorkerStats::default());
            let (c, ev, tp) = (Arc::clone(&calls), Arc::clone(&events), Arc::clone(&taps));
            let params = WorkerParams {
                media_timeout: settings.media_timeout,
                relatch_after: settings.relatch_after,
                batch_interval: settings.batch_interval,
                stats: Arc::clone(&st),
                on_timeout: Box::new(move |call| {
                    let mut calls = lock_calls(&c);
                    calls.remove(&call);
                    lock_taps(&tp).retain(|_, t| t.call != call);
                    drop(calls);
                    ev.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(MediaEvent::Timeout(call));
                }),
                indexes: Some(reporter.clone()),
            };
            match spawn_worker(id, params) {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // Stop what started.
                    drop(Inner {
                        settings: settings.clone(),
                        pool,
                        calls,
                        taps,
                        events,
                        workers,
                        stats,
                        rng: SystemRandom::new(),
                        next_worker: AtomicUsize::new(0),
                        published: Mutex::new(Vec::new()),
                        standby,
                    });
                    return Err(e.into());
                }
            }
            stats.push(st);
        }
        // Only the workers send: the report channel closes with them.
        drop(reporter);
        Ok(MediaEngine {
            inner: Arc::new(Inner {
                settings,
                pool,
                calls,
                taps,
                events,
                workers,
                stats,
                rng: SystemRandom::new(),
                next_worker: AtomicUsize::new(0),
                published: Mutex::new(Vec::new()),
                standby,
            }),
        })
    }

    /// The engine as the signaling side takes it.
    pub fn control(&self) -> Arc<dyn MediaControl> {
        Arc::new(self.clone())
    }

    /// The engine as the admin plane takes it (recording taps).
    pub fn tap_control(&self) -> Arc<dyn TapControl> {
        Arc::new(self.clone())
    }

    /// Stops the workers, closing every media socket. Waits for them when this is the
    /// last handle (drop the `Arc<dyn MediaControl>` from [`MediaEngine::control`] first
    /// to have it wait); otherwise they stop on their own shortly after. Offers made
    /// afterwards still get SDP but no media flows: call this at the end of the process.
    pub fn shutdown(self) {
        for w in &self.inner.workers {
            w.send(Command::Shutdown);
        }
        if let Ok(mut inner) = Arc::try_unwrap(self.inner) {
            for w in &mut inner.workers {
                if let Some(t) = w.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> MediaStats {
        let calls = lock_calls(&self.inner.calls).len();
        let ports_in_use = ports::lock(&self.inner.pool).ports_in_use();
        let mut s = MediaStats {
            active_calls: calls,
            ports_in_use,
            ..MediaStats::default()
        };
        let mut by_reason = [0u64; DropReason::COUNT];
        for w in &self.inner.stats {
            s.packets_relayed += w.relayed.load(Ordering::Relaxed);
            let streams = usize::try_from(w.streams.load(Ordering::Relaxed)).unwrap_or(0);
            s.active_streams += streams;
            s.streams_per_worker.push(streams);
            for (i, r) in DropReason::ALL.iter().enumerate() {
                by_reason[i] += w.dropped(*r);
            }
        }
        s.packets_dropped_auth = by_reason[0];
        s.packets_dropped_total = by_reason.iter().sum();
        s.dropped_by_reason = DropReason::ALL
            .iter()
            .zip(by_reason)
            .map(|(r, n)| (r.as_str(), n))
            .collect();
        s
    }

    /// Publishes the usage gauges: `sbc_media_ports_in_use`, `sbc_media_ports_capacity`
    /// and `sbc_tenant_media_streams{tenant}` (streams holding ports, as the tenant's
    /// `max_streams` counts them). Takes the control locks briefly, never a worker's: call
    /// it periodically (the binary does every second), not per packet.
    pub fn publish_gauges(&self) {
        let (in_use, capacity) = {
            let pool = ports::lock(&self.inner.pool);
            (pool.ports_in_use(), 2 * pool.capacity())
        };
        metrics::gauge!("sbc_media_ports_in_use").set(in_use as f64);
        metrics::gauge!("sbc_media_ports_capacity").set(capacity as f64);
        let mut streams: HashMap<TenantId, usize> = HashMap::new();
        for c in lock_calls(&self.inner.calls).values() {
            *streams.entry(c.tenant.clone()).or_default() +=
                c.streams.iter().filter(|s| s.is_some()).count();
        }
        let mut published = self
            .inner
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for t in published.iter() {
            if !streams.contains_key(t) {
                metrics::gauge!("sbc_tenant_media_streams", "tenant" => t.to_string()).set(0.0);
            }
        }
        for (t, n) in &streams {
            metrics::gauge!("sbc_tenant_media_streams", "tenant" => t.to_string()).set(*n as f64);
        }
        *published = streams.into_keys().collect();
    }

    /// The settings the engine runs with.
    pub fn settings(&self) -> &MediaSettings {
        &self.inner.settings
    }

    fn random_key(&self, profile: SrtpProfile) -> Result<MasterKey, MediaError> {
        let mut buf = Zeroizing::new([0u8; 64]);
        let n = profile.master_key_len() + profile.master_salt_len();
        self.inner
            .rng
            .fill(&mut buf[..n])
            .map_err(|_| MediaError::NotAcceptable("no randomness for SRTP keys".into()))?;
        MasterKey::from_concatenated(profile, &buf[..n])
            .map_err(|_| MediaError::NotAcceptable("SRTP key generation".into()))
    }

    fn random_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        // On failure the session id is 0: still a valid o= line.
        let _ = self.inner.rng.fill(&mut b);
        u64::from_be_bytes(b) >> 2
    }

    /// Our key for `leg` of a stream under `profile`, made once per call.
    fn our_key(
        &self,
        stream: &mut StreamCtl,
        leg: usize,
        profile: SrtpProfile,
    ) -> Result<MasterKey, MediaError> {
        if let Some((_, k)) = stream.our_keys[leg].iter().find(|(p, _)| *p == profile) {
            return Ok(k.clone());
        }
        let k = self.random_key(profile)?;
        stream.our_keys[leg].push((profile, k.clone()));
        Ok(k)
    }

    /// Writes `sd` for `leg`, bumping the o= version only when the body changed.
    fn write_for(
        &self,
        origin: &mut OriginState,
        sd: &SessionDescription,
        media: Vec<MediaRewrite>,
    ) -> Vec<u8> {
        if origin.session_id == 0 {
            origin.session_id = self.random_u64().max(1);
        }
        let mut rw = Rewrite {
            address: self.inner.settings.advertised_address,
            origin_session_id: origin.session_id,
            origin_version: origin.version.max(1),
            media,
        };
        let out = sd.rewrite(&rw);
        if origin.last.as_deref() == Some(&out[..]) {
            return out;
        }
        origin.version = origin.version.saturating_add(1);
        rw.origin_version = origin.version;
        let out = sd.rewrite(&rw);
        origin.last = Some(out.clone());
        out
    }

    fn worker(&self, w: usize) -> Option<&WorkerHandle> {
        self.inner.workers.get(w)
    }

    /// Tells the worker running `call` to drop tap (or recorded stream) `id`; nothing if
    /// the call has ended.
    fn remove_in_worker(&self, calls: &HashMap<CallRef, CallCtl>, call: CallRef, id: TapId) {
        if let Some(w) = calls.get(&call).and_then(|c| self.worker(c.worker)) {
            w.send(Command::RemoveTap { call, id });
        }
    }

    /// A new tap on `call` (whose control state is `ctl`, calls lock held): checks the
    /// limits and picks an id; returns what the worker needs and what the control side
    /// records once the worker has it.
    /// `recorded_line` is set for a recorded stream: the m-line it forks; it is bounded by
    /// [`MAX_RECORDED_STREAMS_PER_CALL`] and other taps by [`MAX_TAPS_PER_CALL`].
    fn new_tap(
        &self,
        call: CallRef,
        ctl: &CallCtl,
        spec: TapSpec,
        socket: std::net::UdpSocket,
        (srtp, recorded_line): (Option<[SrtpContext; 2]>, Option<usize>),
    ) -> Result<(Box<TapSetup>, TapCtl), TapError> {
        let taps = lock_taps(&self.inner.taps);
        if taps.len() >= MAX_TAPS {
            return Err(TapError::TooMany { max: MAX_TAPS });
        }
        let max = if recorded_line.is_some() {
            MAX_RECORDED_STREAMS_PER_CALL
        } else {
            MAX_TAPS_PER_CALL
        };
        let same_kind = taps
            .values()
            .filter(|t| t.call == call && t.recorded.is_some() == recorded_line.is_some())
            .count();
        if same_kind >= max {
            return Err(TapError::TooMany { max });
        }
        // 62 random bits: a collision among at most MAX_TAPS live ids is a freak; zero
        // means the system RNG failed, which retrying will not fix for long.
        let id = (0..4)
            .map(|_| TapId(self.random_u64()))
            .find(|id| id.0 != 0 && !taps.contains_key(id))
            .ok_or_else(|| TapError::Unavailable("no randomness for the tap id".into()))?;
        let (setup, entry) =
            tap_parts::tap_pair(id, (call, &ctl.tenant), spec, socket, (srtp, recorded_line));
        Ok((Box::new(setup), entry))
    }

    /// Hands an answer's committed streams to the call's worker (calls lock held, `ctl`
    /// is the call's state), with the taps that must see its first packet: the tenant's
    /// automatic tap (on the first commit) and recorded streams started before it.
    fn ship_commit(
        &self,
        call: CallRef,
        ctl: &mut CallCtl,
        setups: Vec<StreamSetup>,
    ) -> Result<(), MediaError> {
        let tenant = ctl.tenant.clone();
        let bandwidth_kbps = ctl.pending.as_ref().map_or(0, |p| p.policy.bandwidth_kbps);
        // The automatic tap is recorded while the calls lock is held, like every tap, so
        // the per-call limit holds against a tap started through the API meanwhile.
        let mut taps = Vec::new();
        let mut record_id = None;
        if let Some(spec) = ctl.record.take() {
            if setups.is_empty() {
                ctl.record = Some(spec);
            } else if let Some((setup, entry)) = self.new_record_tap(call, ctl, spec) {
                tracing::info!(%call, %tenant, tap = %setup.id, destination = %spec.destination,
                    legs = spec.legs.as_str(), "automatic recording tap started (tenant media.record_to)");
                lock_taps(&self.inner.taps).insert(setup.id, entry);
                record_id = Some(setup.id);
                taps.push(*setup);
            }
        }
        let mut recorded = Vec::new();
        if !setups.is_empty() {
            for t in lock_taps(&self.inner.taps)
                .values_mut()
                .filter(|t| t.call == call)
            {
                if let Some(r) = t.recorded.as_mut().filter(|r| r.started) {
                    if let Some(setup) = r.parked.take() {
                        recorded.push(setup.id);
                        taps.push(*setup);
                    }
                }
            }
        }
        let Some(w) = self.worker(ctl.worker) else {
            return Ok(());
        };
        if !w.send(Command::Upsert {
            call,
            streams: setups,
            taps,
        }) {
            let mut all = lock_taps(&self.inner.taps);
            for id in record_id.iter().chain(&recorded) {
                all.remove(id);
            }
            tracing::error!(%call, "media worker is gone");
            return Err(MediaError::NoPorts);
        }
        if bandwidth_kbps > 0 {
            // Each worker enforces an equal share: no state shared across workers.
            let workers = self.inner.workers.len().max(1) as f64;
            w.send(Command::Bandwidth {
                call,
                tenant,
                bytes_per_second: f64::from(bandwidth_kbps) * 1000.0 / 8.0 / workers,
            });
        }
        Ok(())
    }

    /// A tenant's automatic recording tap (`[tenants.media] record_to`, plain RTP), made
    /// while the answer commits the call's first streams and shipped inside that same
    /// `Upsert`, so the worker has it before it can relay the call's first packet.
    fn new_record_tap(
        &self,
        call: CallRef,
        ctl: &CallCtl,
        spec: TapSpec,
    ) -> Option<(Box<TapSetup>, TapCtl)> {
        let made = tap_socket(spec.destination)
            .and_then(|socket| self.new_tap(call, ctl, spec, socket, (None, None)));
        match made {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(%call, tenant = %ctl.tenant, error = %e, "automatic recording tap not started");
                None
            }
        }
    }
}

fn sdp_error(e: SdpError) -> MediaError {
    match e {
        SdpError::TooManyMedia { max } => {
            MediaError::NotAcceptable(format!("more than {max} m-lines"))
        }
        e => MediaError::Malformed(e.to_string()),
    }
}

/// The suites a policy allows, known to us, deduplicated, in its order.
fn allowed_suites(p: &LegPolicy) -> Vec<SrtpProfile> {
    let mut out: Vec<SrtpProfile> = Vec::new();
    for s in &p.suites {
        match s.parse::<SrtpProfile>() {
            Ok(profile) if !out.contains(&profile) => out.push(profile),
            Ok(_) => {}
            Err(_) => tracing::debug!(suite = %s, "unknown SRTP suite in media policy ignored"),
        }
    }
    out
}

/// The payload formats of m-line `line` when it is relayed.
fn line_formats(sd: &SessionDescription, line: Option<usize>) -> Option<Vec<RtpFormat>> {
    line.and_then(|i| sd.media.get(i))
        .filter(|m| m.is_relayable())
        .map(sdp::Media::rtp_formats)
}

fn media_ip(sd: &SessionDescription, m: &sdp::Media) -> Option<IpAddr> {
    m.connection.or(sd.connection).and_then(|c| c.address)
}

/// The peer's RTP and RTCP addresses from its SDP.
fn peer_addrs(sd: &SessionDescription, m: &sdp::Media) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let ip = media_ip(sd, m);
    let rtp = ip.map(|ip| SocketAddr::new(ip, m.port));
    let rtcp = if m.rtcp_mux {
        rtp
    } else if let Some(r) = m.rtcp {
        r.address.or(ip).map(|ip| SocketAddr::new(ip, r.port))
    } else {
        ip.map(|ip| SocketAddr::new(ip, m.port.wrapping_add(1)))
    };
    (rtp, rtcp)
}

fn bind_error(e: BindError) -> MediaError {
    match e {
        BindError::Exhausted | BindError::Unbindable => MediaError::NoPorts,
    }
}

impl MediaControl for MediaEngine {
    fn offer(
        &self,
        call: CallRef,
        tenant: &TenantId,
        from: LegSide,
        sdp_body: &[u8],
        policy: &MediaPolicy,
    ) -> Result<Vec<u8>, MediaError> {
        let sd = sdp::parse(sdp_body).map_err(sdp_error)?;
        if sd.media.len() > self.inner.settings.max_streams {
            return Err(MediaError::NotAcceptable(format!(
                "{} m-lines, at most {} allowed",
                sd.media.len(),
                self.inner.settings.max_streams
            )));
        }
        let t = idx(from.other());
        let s_pol = policy.leg(from);
        let t_pol = policy.leg(from.other());
        let s_suites = allowed_suites(s_pol);
        let t_suites = allowed_suites(t_pol);

        // Decide every m-line before touching ports.
        let mut plan: Vec<Option<PendingMedia>> = Vec::with_capacity(sd.media.len());
        let mut refusal: Option<&'static str> = None;
        for m in &sd.media {
            let decided = (|| {
                let proto = m
                    .proto
                    .filter(|_| m.is_relayable())
                    .ok_or("unsupported media")?;
                let from_crypto = if proto.is_secure() {
                    if s_pol.srtp == SrtpMode::Plain {
                        return Err("SRTP offered on a plain-RTP leg");
                    }
                    let c = m
                        .crypto
                        .iter()
                        .find(|c| c.usable && c.profile.is_some_and(|p| s_suites.contains(&p)))
                        .ok_or("no acceptable crypto suite")?;
                    match (c.profile, &c.key) {
                        (Some(profile), Some(key)) => Some((
                            c.tag,
                            KeySpec {
                                profile,
                                key: key.clone(),
                                mki: c.mki,
                            },
                        )),
                        _ => return Err("no acceptable crypto suite"),
                    }
                } else {
                    if s_pol.srtp == SrtpMode::Required {
                        return Err("SRTP required");
                    }
                    None
                };
                let to_secure = match t_pol.srtp {
                    SrtpMode::Plain => false,
                    SrtpMode::Optional => !t_suites.is_empty(),
                    SrtpMode::Required if t_suites.is_empty() => {
                        return Err("no SRTP suite configured for the other leg")
                    }
                    SrtpMode::Required => true,
                };
                let (from_sdp_rtp, from_sdp_rtcp) = peer_addrs(&sd, m);
                Ok(PendingMedia {
                    from_proto: proto,
                    from_crypto,
                    from_mux: m.rtcp_mux,
                    from_sdp_rtp,
                    from_sdp_rtcp,
                    to_secure,
                    offered: Vec::new(),
                })
            })();
            match decided {
                Ok(p) => plan.push(Some(p)),
                Err(reason) => {
                    refusal.get_or_insert(reason);
                    plan.push(None);
                }
            }
        }
        if plan.iter().all(Option::is_none) {
            return Err(MediaError::NotAcceptable(
                refusal.unwrap_or("no media").to_string(),
            ));
        }

        let mut calls = lock_calls(&self.inner.calls);
        if policy.max_streams > 0 {
            // The tenant's streams now, and the ones this offer would add.
            let in_use: usize = calls
                .values()
                .filter(|c| &c.tenant == tenant)
                .map(|c| c.streams.iter().filter(|s| s.is_some()).count())
                .sum();
            let existing = calls.get(&call);
            let adding = plan
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    p.is_some()
                        && existing
                            .and_then(|c| c.streams.get(*i))
                            .is_none_or(|s| s.is_none())
                })
                .count();
            if in_use + adding > policy.max_streams as usize {
                tracing::info!(%call, tenant = %tenant, in_use, adding, limit = policy.max_streams, "tenant media stream limit: offer refused");
                return Err(MediaError::TenantStreams);
            }
        }
        let is_new = !calls.contains_key(&call);
        let workers = self.inner.workers.len().max(1);
        let next = &self.inner.next_worker;
        let ctl = calls.entry(call).or_insert_with(|| CallCtl {
            tenant: tenant.clone(),
            worker: next.fetch_add(1, Ordering::Relaxed) % workers,
            streams: Vec::new(),
            pending: None,
            origin: Default::default(),
            format: sd
                .media
                .iter()
                .find(|m| m.is_relayable() && m.kind == "audio")
                .and_then(sdp::Media::first_codec),
            record: policy.record,
            recorded_line: None,
            formats: Default::default(),
            bandwidth_kbps: policy.bandwidth_kbps,
        });
        if ctl.streams.len() < plan.len() {
            ctl.streams.resize_with(plan.len(), || None);
        }
        // Ports for streams new in this offer; undone on failure.
        let mut fresh: Vec<usize> = Vec::new();
        let mut failed = None;
        for (i, p) in plan.iter().enumerate() {
            if p.is_none() || ctl.streams[i].is_some() {
                continue;
            }
            let (ip, freebind) = (
                self.inner.settings.bind_address,
                self.inner.settings.freebind,
            );
            let pair = ports::bind_pair_on(&self.inner.pool, ip, freebind)
                .and_then(|a| ports::bind_pair_on(&self.inner.pool, ip, freebind).map(|b| [a, b]));
            match pair {
                Ok(pair) => {
                    ctl.streams[i] = Some(StreamCtl {
                        ports: [pair[0].port(), pair[1].port()],
                        sockets: Some(pair),
                        ..StreamCtl::default()
                    });
                    fresh.push(i);
                }
                Err(e) => {
                    failed = Some(bind_error(e));
                    break;
                }
            }
        }
        if let Some(err) = failed {
            for i in fresh {
                ctl.streams[i] = None;
            }
            if is_new {
                calls.remove(&call);
            }
            return Err(err);
        }

        let mut rewrites = Vec::with_capacity(plan.len());
        for (i, p) in plan.iter_mut().enumerate() {
            let (Some(p), Some(stream)) = (p.as_mut(), ctl.streams[i].as_mut()) else {
                rewrites.push(MediaRewrite {
                    port: 0,
                    proto: None,
                    crypto: Vec::new(),
                    rtcp_mux: false,
                });
                continue;
            };
            if p.to_secure {
                for (n, profile) in t_suites.iter().enumerate() {
                    let key = self.our_key(stream, t, *profile)?;
                    p.offered.push(CryptoOut {
                        // At most six suites: the tag fits.
                        tag: n as u32 + 1,
                        profile: *profile,
                        key,
                    });
                }
            }
            rewrites.push(MediaRewrite {
                port: stream.ports[t],
                proto: Some(p.from_proto.with_secure(p.to_secure)),
                crypto: p.offered.clone(),
                rtcp_mux: p.from_mux,
            });
        }
        let out = self.write_for(&mut ctl.origin[t], &sd, rewrites);
        if ctl.recorded_line.is_none() {
            let relayed = |i: &usize| plan.get(*i).is_some_and(Option::is_some);
            ctl.recorded_line = (0..sd.media.len())
                .filter(relayed)
                .find(|i| sd.media[*i].kind == "audio")
                .or_else(|| (0..sd.media.len()).find(relayed));
        }
        if let Some(f) = line_formats(&sd, ctl.recorded_line) {
            ctl.formats[idx(from)] = f;
        }
        ctl.pending = Some(Pending {
            from,
            policy: policy.clone(),
            media: plan,
        });
        self.replicate(call, ctl);
        Ok(out)
    }

    fn answer(&self, call: CallRef, from: LegSide, sdp_body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let sd = sdp::parse(sdp_body).map_err(sdp_error)?;
        let mut calls = lock_calls(&self.inner.calls);
        let ctl = calls.get_mut(&call).ok_or(MediaError::UnknownCall(call))?;
        let Some(pending) = ctl.pending.as_ref() else {
            return Err(MediaError::NotAcceptable("no offer to answer".into()));
        };
        if pending.from == from {
            return Err(MediaError::NotAcceptable(
                "answer from the leg that offered".into(),
            ));
        }
        if sd.media.len() != pending.media.len() {
            return Err(MediaError::Malformed(format!(
                "answer has {} m-lines, the offer had {}",
                sd.media.len(),
                pending.media.len()
            )));
        }
        let s_side = pending.from;
        let s = idx(s_side);
        let t_required = pending.policy.leg(from).srtp == SrtpMode::Required;

        // Decide per m-line: (leg configs [caller, callee], rewrite for S).
        let mut decided: Vec<Option<([LegConfig; 2], MediaRewrite)>> = Vec::new();
        let mut refusal: Option<&'static str> = None;
        for (i, am) in sd.media.iter().enumerate() {
            let pm = pending.media[i].as_ref();
            let stream = ctl.streams.get_mut(i).and_then(Option::as_mut);
            let (Some(pm), Some(stream)) = (pm, stream) else {
                decided.push(None);
                continue;
            };
            let r = (|| {
                let proto = am
                    .proto
                    .filter(|_| am.is_relayable())
                    .ok_or("stream refused by the answerer")?;
                // The other leg's keys.
                let (t_rx, t_tx) = if pm.to_secure && proto.is_secure() {
                    let mut chosen = None;
                    for c in am.crypto.iter().filter(|c| c.usable) {
                        let ours = pm
                            .offered
                            .iter()
                            .find(|o| o.tag == c.tag && Some(o.profile) == c.profile);
                        if let (Some(o), Some(key)) = (ours, &c.key) {
                            chosen = Some((
                                KeySpec {
                                    profile: o.profile,
                                    key: key.clone(),
                                    mki: c.mki,
                                },
                                KeySpec {
                                    profile: o.profile,
                                    key: o.key.clone(),
                                    mki: None,
                                },
                            ));
                            break;
                        }
                    }
                    let (rx, tx) = chosen.ok_or("answer crypto does not match the offer")?;
                    (Some(rx), Some(tx))
                } else if proto.is_secure() {
                    return Err("SRTP answer to a plain RTP offer");
                } else if pm.to_secure && t_required {
                    return Err("SRTP required but answered with RTP");
                } else {
                    (None, None)
                };
                Ok((t_rx, t_tx, proto))
            })();
            let (t_rx, t_tx, _proto) = match r {
                Ok(v) => v,
                Err(reason) => {
                    refusal.get_or_insert(reason);
                    decided.push(None);
                    continue;
                }
            };
            // The offering leg's keys: its own, and ours for the suite it chose.
            let (s_rx, s_tx, s_crypto) = match &pm.from_crypto {
                Some((tag, spec)) => {
                    let key = self.our_key(stream, s, spec.profile)?;
                    (
                        Some(spec.clone()),
                        Some(KeySpec {
                            profile: spec.profile,
                            key: key.clone(),
                            mki: None,
                        }),
                        vec![CryptoOut {
                            tag: *tag,
                            profile: spec.profile,
                            key,
                        }],
                    )
                }
                None => (None, None, Vec::new()),
            };
            let (t_sdp_rtp, t_sdp_rtcp) = peer_addrs(&sd, am);
            let t_mux = am.rtcp_mux && pm.from_mux;
            let s_cfg = LegConfig {
                secure: s_rx.is_some(),
                rx: s_rx,
                tx: s_tx,
                rtcp_mux: pm.from_mux,
                sdp_rtp: pm.from_sdp_rtp,
                sdp_rtcp: pm.from_sdp_rtcp,
            };
            let t_cfg = LegConfig {
                secure: t_rx.is_some(),
                rx: t_rx,
                tx: t_tx,
                rtcp_mux: t_mux,
                sdp_rtp: t_sdp_rtp,
                sdp_rtcp: if t_mux { t_sdp_rtp } else { t_sdp_rtcp },
            };
            let legs = if s == 0 {
                [s_cfg, t_cfg]
            } else {
                [t_cfg, s_cfg]
            };
            let rw = MediaRewrite {
                port: stream.ports[s],
                proto: Some(pm.from_proto),
                crypto: s_crypto,
                rtcp_mux: pm.from_mux,
            };
            decided.push(Some((legs, rw)));
        }
        if decided.iter().all(Option::is_none) {
            return Err(MediaError::NotAcceptable(
                refusal.unwrap_or("no media").to_string(),
            ));
        }

        // Commit: hand new sockets and all keys to the worker.
        let mut setups = Vec::new();
        let mut rewrites = Vec::with_capacity(decided.len());
        for (i, d) in decided.into_iter().enumerate() {
            match d {
                Some((legs, rw)) => {
                    if let Some(stream) = ctl.streams.get_mut(i).and_then(Option::as_mut) {
                        stream.legs = Some(legs.clone());
                        setups.push(StreamSetup {
                            index: i,
                            sockets: stream.sockets.take(),
                            legs,
                            counters: stream.counters.clone(),
                        });
                        stream.committed = true;
                    }
                    rewrites.push(rw);
                }
                None => rewrites.push(MediaRewrite {
                    port: 0,
                    proto: None,
                    crypto: Vec::new(),
                    rtcp_mux: false,
                }),
            }
        }
        let out = self.write_for(&mut ctl.origin[s], &sd, rewrites);
        if let Some(f) = line_formats(&sd, ctl.recorded_line) {
            ctl.formats[idx(from)] = f;
        }
        // Sent before the calls lock is released: a tap or recorded stream started right
        // after this commit goes to the worker behind this `Upsert`, never before it.
        let shipped = self.ship_commit(call, ctl, setups);
        if shipped.is_ok() {
            self.replicate(call, ctl);
        }
        drop(calls);
        shipped?;
        Ok(out)
    }

    fn delete(&self, call: CallRef) {
        let mut calls = lock_calls(&self.inner.calls);
        let removed = calls.remove(&call);
        lock_taps(&self.inner.taps).retain(|_, t| t.call != call);
        drop(calls);
        if let Some(ctl) = removed {
            if let Some(w) = self.worker(ctl.worker) {
                w.send(Command::Remove(call));
            }
        }
    }

    fn poll_events(&self) -> Vec<MediaEvent> {
        std::mem::take(
            &mut self
                .inner
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .queued,
        )
    }

    fn set_event_sink(&self, sink: sbc_core::media::MediaEventSink) {
        let mut q = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
        for event in std::mem::take(&mut q.queued) {
            sink(event);
        }
        q.sink = Some(sink);
    }

    fn counters(&self, call: CallRef) -> Option<[MediaCounters; 2]> {
        let calls = lock_calls(&self.inner.calls);
        let ctl = calls.get(&call)?;
        let mut out = [MediaCounters::default(); 2];
        let mut any = false;
        for stream in ctl.streams.iter().flatten().filter(|s| s.committed) {
            any = true;
            for (sum, c) in out.iter_mut().zip(&stream.counters) {
                sum.packets_received += c.received.load(Ordering::Relaxed);
                sum.packets_sent += c.sent.load(Ordering::Relaxed);
                sum.packets_lost += c.lost.load(Ordering::Relaxed);
            }
        }
        any.then_some(out)
    }
}

impl RecordingMedia for MediaEngine {
    fn prepare_stream(
        &self,
        call: CallRef,
        leg: LegSide,
        transport: TapTransport,
    ) -> Result<PreparedStream, TapError> {
        let settings = &self.inner.settings;
        let socket = fork_socket(settings.bind_address)?;
        let port = socket
            .local_addr()
            .map_err(|e| TapError::Unavailable(format!("recording socket: {e}")))?
            .port();
        // The SRS sends to what the offer names: the advertised address, like the call's.
        let local = SocketAddr::new(settings.advertised_address, port);
        let (srtp, key) = match transport {
            TapTransport::Rtp => (None, None),
            TapTransport::Srtp(suite) => {
                let (ctx, key, _) = tap_key(&self.inner.rng, suite)?;
                (Some(ctx), Some(key))
            }
        };
        let calls = lock_calls(&self.inner.calls);
        let ctl = calls.get(&call).ok_or(TapError::UnknownCall(call))?;
        let line = ctl
            .recorded_line
            .filter(|i| ctl.streams.get(*i).is_some_and(Option::is_some))
            .ok_or(TapError::NoMedia(call))?;
        // Until the callee answers, it can only send what the offer listed.
        let formats = [idx(leg), idx(leg.other())]
            .iter()
            .map(|i| &ctl.formats[*i])
            .find(|f| !f.is_empty())
            .cloned()
            .unwrap_or_default();
        let legs = match leg {
            LegSide::Caller => TapLegs::Caller,
            LegSide::Callee => TapLegs::Callee,
        };
        let unset = SocketAddr::new(settings.bind_address, 0);
        let spec = TapSpec {
            legs,
            transport,
            destination: unset,
        };
        let (setup, mut entry) = self.new_tap(call, ctl, spec, socket, (srtp, Some(line)))?;
        let id = setup.id;
        entry.recorded = Some(RecordedCtl {
            parked: Some(setup),
            started: false,
            local: SocketAddr::new(settings.bind_address, port),
        });
        lock_taps(&self.inner.taps).insert(id, entry);
        tracing::info!(%call, stream = %id, leg = legs.as_str(), transport = transport.as_str(), "recorded stream prepared");
        Ok(PreparedStream {
            id,
            local,
            key,
            formats,
        })
    }

    fn start_stream(&self, stream: TapId, destination: SocketAddr) -> Result<(), TapError> {
        if destination.port() == 0
            || destination.ip().is_unspecified()
            || destination.ip().is_multicast()
        {
            return Err(TapError::Invalid(
                "destination must be a unicast address with a port",
            ));
        }
        let calls = lock_calls(&self.inner.calls);
        let mut taps = lock_taps(&self.inner.taps);
        let t = taps
            .get_mut(&stream)
            .filter(|t| t.recorded.is_some())
            .ok_or(TapError::Invalid("no such recorded stream"))?;
        let call = t.call;
        let ctl = calls.get(&call).ok_or(TapError::UnknownCall(call))?;
        let Some(r) = t.recorded.as_mut() else {
            return Err(TapError::Invalid("no such recorded stream"));
        };
        if r.local.is_ipv4() != destination.is_ipv4() {
            return Err(TapError::Invalid(
                "destination address family differs from the media address",
            ));
        }
        let worker = self.worker(ctl.worker);
        let committed = ctl.streams.iter().flatten().any(|s| s.committed);
        let sent = match r.parked.take() {
            Some(mut setup) => {
                setup.destination = destination;
                if committed {
                    worker.is_some_and(|w| w.send(Command::AddTap { call, tap: setup }))
                } else {
                    // The call's first answer ships it (`ship_commit`).
                    r.parked = Some(setup);
                    true
                }
            }
            None => worker.is_some_and(|w| {
                w.send(Command::MoveTap {
                    call,
                    id: stream,
                    destination,
                })
            }),
        };
        if !sent {
            taps.remove(&stream);
            return Err(TapError::Unavailable("media worker is gone".into()));
        }
        let moved = r.started;
        r.started = true;
        t.spec.destination = destination;
        tracing::info!(%call, %stream, moved, "recorded stream started");
        Ok(())
    }

    fn pause_stream(&self, stream: TapId, paused: bool) -> bool {
        let taps = lock_taps(&self.inner.taps);
        let Some(t) = taps.get(&stream).filter(|t| t.recorded.is_some()) else {
            return false;
        };
        t.counters.paused.store(paused, Ordering::Release);
        tracing::info!(call = %t.call, %stream, paused, "recorded stream paused or resumed");
        true
    }

    fn stream_formats(&self, stream: TapId) -> Option<Vec<RtpFormat>> {
        // One lock at a time (never taps inside calls here): copy what the tap knows.
        let (call, leg) = {
            let taps = lock_taps(&self.inner.taps);
            let t = taps.get(&stream).filter(|t| t.recorded.is_some())?;
            let leg = match t.spec.legs {
                TapLegs::Callee => LegSide::Callee,
                _ => LegSide::Caller,
            };
            (t.call, leg)
        };
        let calls = lock_calls(&self.inner.calls);
        let ctl = calls.get(&call)?;
        // Like prepare: a leg that has not sent SDP yet sends what the other offered.
        [idx(leg), idx(leg.other())]
            .iter()
            .map(|i| &ctl.formats[*i])
            .find(|f| !f.is_empty())
            .cloned()
    }

    fn release_stream(&self, stream: TapId) -> bool {
        let calls = lock_calls(&self.inner.calls);
        let Some(t) = take_tap(&self.inner.taps, stream, true) else {
            return false;
        };
        let in_worker = t.recorded.as_ref().is_some_and(|r| r.parked.is_none());
        if in_worker {
            self.remove_in_worker(&calls, t.call, stream);
        }
        tracing::info!(call = %t.call, %stream, "recorded stream released");
        true
    }
}

impl TapControl for MediaEngine {
    fn start_tap(&self, call: CallRef, spec: TapSpec) -> Result<TapInfo, TapError> {
        let dest = spec.destination;
        if dest.port() == 0 || dest.ip().is_unspecified() || dest.ip().is_multicast() {
            return Err(TapError::Invalid(
                "destination must be a unicast address with a port",
            ));
        }
        // Socket and key before the locks: neither needs them.
        let socket = tap_socket(dest)?;
        let (srtp, key, master) = match spec.transport {
            TapTransport::Rtp => (None, None, None),
            TapTransport::Srtp(suite) => {
                let (ctx, key, master) = tap_key(&self.inner.rng, suite)?;
                (Some(ctx), Some(key), Some(master))
            }
        };
        let calls = lock_calls(&self.inner.calls);
        let ctl = calls.get(&call).ok_or(TapError::UnknownCall(call))?;
        if !ctl.streams.iter().flatten().any(|s| s.committed) {
            return Err(TapError::NoMedia(call));
        }
        let (setup, mut entry) = self.new_tap(call, ctl, spec, socket, (srtp, None))?;
        entry.key = master;
        let id = setup.id;
        let sent = self
            .worker(ctl.worker)
            .is_some_and(|w| w.send(Command::AddTap { call, tap: setup }));
        if !sent {
            return Err(TapError::Unavailable("media worker is gone".into()));
        }
        lock_taps(&self.inner.taps).insert(id, entry);
        self.replicate(call, ctl);
        tracing::info!(%call, tap = %id, legs = spec.legs.as_str(), transport = spec.transport.as_str(), "recording tap started");
        Ok(TapInfo { id, key })
    }

    /// Recorded streams are not stopped here (false): the recording client owns them.
    fn stop_tap(&self, tap: TapId) -> bool {
        let calls = lock_calls(&self.inner.calls);
        let Some(t) = take_tap(&self.inner.taps, tap, false) else {
            return false;
        };
        self.remove_in_worker(&calls, t.call, tap);
        if let Some(ctl) = calls.get(&t.call) {
            self.replicate(t.call, ctl);
        }
        tracing::info!(call = %t.call, %tap, "recording tap stopped");
        true
    }

    fn list_taps(&self, call: CallRef) -> Vec<TapStatus> {
        // A recorded stream is listed once started (before, it has no destination).
        let mut out: Vec<TapStatus> = lock_taps(&self.inner.taps)
            .iter()
            .filter(|(_, t)| t.call == call && t.recorded.as_ref().is_none_or(|r| r.started))
            .map(|(id, t)| TapStatus {
                id: *id,
                legs: t.spec.legs,
                transport: t.spec.transport,
                destination: t.spec.destination,
                packets_sent: t.counters.sent.load(Ordering::Relaxed),
                packets_dropped: t.counters.dropped.load(Ordering::Relaxed),
                recording: t.recorded.is_some(),
                paused: t.counters.paused.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by_key(|t| t.id);
        out
    }

    fn tap_owner(&self, tap: TapId) -> Option<TapOwner> {
        lock_taps(&self.inner.taps).get(&tap).map(|t| TapOwner {
            call: t.call,
            tenant: t.tenant.clone(),
        })
    }

    fn media_format(&self, call: CallRef) -> Option<(String, u32)> {
        lock_calls(&self.inner.calls)
            .get(&call)
            .and_then(|c| c.format.clone())
    }
}
