//! Hot standby, media side (issue #16): the engine's [`ReplicaPart::Media`] and
//! [`ReplicaPart::Indexes`] parts, and [`MediaTakeover`] (restore a claimed call's
//! streams on this node).
//!
//! When parts are put: the Media part after each offer (a first offer, so an early
//! dialog's answer can be taken here; a re-offer), each answer that commits streams and
//! each tap started or stopped, from the control side with the calls lock held (so a
//! part is never put after `delete` removed the call); the Indexes part when a worker
//! reports the call's SRTP progress (`relay/indexes.rs`), from one forwarding thread that
//! also holds the calls lock while it puts.
//!
//! Restore binds the stored address:port pairs with `IP_FREEBIND` (taken from this node's
//! pool when they are of its address and range, else held outside it), installs SRTP
//! contexts from the stored keys at the stored indexes, starts each leg sending to its
//! stored latched peer (else its SDP address) until a packet that passes authentication
//! latches, hands the call to a worker in one command, re-creates its taps toward their
//! stored destinations, and counts its streams in the tenant's stream count (the calls
//! map is what the quota counts). Recorded SIPREC streams are not restored (their
//! recording session is the SIP side's).
//!
//! Owns: the conversion between the engine's state and `replica.rs`'s records. Must not:
//! wait on the sink, put a part after `delete`, or show a key anywhere but the secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sbc_core::media::{CallRef, LegPolicy, LegSide, MediaError, MediaPolicy, SrtpMode};
use sbc_core::standby::{
    MediaTakeover, ReplicaPart, ReplicaUpdate, SecretBytes, SharedMediaTakeover, SharedReplicaSink,
};
use sbc_core::tap::{TapId, TapLegs, TapSpec, TapSuite, TapTransport};
use sbc_core::tenant::TenantId;

use super::tap_parts::tap_pair;
use super::{
    lock_calls, lock_taps, tap_profile, tap_socket, CallCtl, MediaEngine, OriginState, Pending,
    PendingMedia, StreamCtl, TapCtl,
};
use crate::ports::{self, BoundPair};
use crate::relay::{
    Command, IndexReport, IndexReporter, KeySpec, LegConfig, StreamSetup, TapSetup, INDEX_QUEUE,
};
use crate::replica::{
    indexes_from_json, indexes_to_json, KeyRef, KeyTable, LegPolicyRecord, LegRecord, MediaRecord,
    OriginRecord, PendingMediaRecord, PendingRecord, RecordError, StreamRecord, TapRecord,
    TapSpecRecord, RECORD_VERSION,
};
use crate::sdp::{CryptoOut, RtpProto};
use crate::srtp::{SrtpConfig, SrtpContext};

type SharedSink = Arc<Mutex<Option<SharedReplicaSink>>>;

/// The engine's hot standby state.
#[derive(Debug)]
pub(super) struct Standby {
    sink: SharedSink,
    /// The workers' index reports, until a sink is set (then its forwarding thread's).
    reports: Mutex<Option<Receiver<IndexReport>>>,
    /// The workers' refresh interval in ms (0 until a sink is set: nothing reported).
    refresh_ms: Arc<AtomicU64>,
}

impl Standby {
    /// The state, and the reporter each worker gets a clone of.
    pub(super) fn new() -> (Standby, IndexReporter) {
        let (tx, rx): (SyncSender<IndexReport>, _) = std::sync::mpsc::sync_channel(INDEX_QUEUE);
        let refresh_ms = Arc::new(AtomicU64::new(0));
        let reporter = IndexReporter {
            tx,
            refresh_ms: Arc::clone(&refresh_ms),
        };
        let standby = Standby {
            sink: Arc::new(Mutex::new(None)),
            reports: Mutex::new(Some(rx)),
            refresh_ms,
        };
        (standby, reporter)
    }

    fn sink(&self) -> Option<SharedReplicaSink> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn bad(e: RecordError) -> MediaError {
    MediaError::Malformed(e.to_string())
}

impl MediaEngine {
    /// Replicate every call's Media part (after each answer that commits streams, each
    /// tap change, each re-offer) and Indexes part (from the workers, at least every
    /// `index_refresh`) to `sink`.
    pub fn set_replica_sink(&self, sink: SharedReplicaSink, index_refresh: Duration) {
        let st = &self.inner.standby;
        *st.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        let ms = u64::try_from(index_refresh.as_millis()).unwrap_or(u64::MAX);
        st.refresh_ms.store(ms.max(1), Ordering::Relaxed);
        let reports = st.reports.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(reports) = reports else {
            return; // The forwarding thread runs already and reads the new sink.
        };
        // Weak: the calls (and the sockets of unanswered offers) go with the engine, not
        // with this thread, which ends a little later when the workers have stopped.
        let (calls, sink) = (Arc::downgrade(&self.inner.calls), Arc::clone(&st.sink));
        let spawned = std::thread::Builder::new()
            .name("sbc-media-replica".into())
            .spawn(move || forward_reports(&reports, &calls, &sink));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "media index replication thread did not start");
        }
    }

    /// This engine as the media side of a takeover.
    pub fn takeover(&self) -> SharedMediaTakeover {
        Arc::new(self.clone())
    }

    /// Puts `call`'s Media part (calls lock held, `ctl` is its state).
    pub(super) fn replicate(&self, call: CallRef, ctl: &CallCtl) {
        let Some(sink) = self.inner.standby.sink() else {
            return;
        };
        let mut keys = KeyTable::default();
        let mut record = self.media_record(ctl, &mut keys);
        let taps = lock_taps(&self.inner.taps);
        record.taps = taps
            .iter()
            .filter(|(_, t)| t.call == call && t.recorded.is_none())
            .map(|(id, t)| TapRecord {
                id: id.0,
                spec: spec_record(&t.spec),
                key: t.key.as_ref().map(|k| keys.add_raw(k)),
            })
            .collect();
        drop(taps);
        sink.put(ReplicaUpdate {
            call,
            tenant: ctl.tenant.clone(),
            part: ReplicaPart::Media,
            public: record.to_json(),
            secret: Some(keys.to_secret()),
        });
    }

    fn media_record(&self, ctl: &CallCtl, keys: &mut KeyTable) -> MediaRecord {
        let address = self.inner.settings.bind_address;
        let mut key_ref = |k: &KeySpec| keys.add(k.profile, &k.key, k.mki.as_ref());
        let streams = ctl
            .streams
            .iter()
            .map(|s| {
                s.as_ref().map(|s| StreamRecord {
                    address,
                    ports: s.ports,
                    committed: s.committed,
                    our_keys: [0, 1].map(|leg| {
                        s.our_keys[leg]
                            .iter()
                            .map(|(p, k)| {
                                key_ref(&KeySpec {
                                    profile: *p,
                                    key: k.clone(),
                                    mki: None,
                                })
                            })
                            .collect()
                    }),
                    legs: s.legs.as_ref().map(|l| {
                        [
                            leg_record(&l[0], &mut key_ref),
                            leg_record(&l[1], &mut key_ref),
                        ]
                    }),
                })
            })
            .collect();
        let pending = ctl
            .pending
            .as_ref()
            .map(|p| pending_record(p, &mut key_ref));
        MediaRecord {
            v: RECORD_VERSION,
            streams,
            origin: [0, 1].map(|i| OriginRecord {
                session_id: ctl.origin[i].session_id,
                version: ctl.origin[i].version,
            }),
            format: ctl.format.clone(),
            recorded_line: ctl.recorded_line,
            record: ctl.record.as_ref().map(spec_record),
            pending,
            taps: Vec::new(),
            bandwidth_kbps: ctl.bandwidth_kbps,
        }
    }
}

/// The forwarding thread: each report becomes the call's Indexes part, put while the
/// calls lock is held (a call deleted meanwhile gets nothing). Ends when the workers do.
fn forward_reports(
    reports: &Receiver<IndexReport>,
    calls: &std::sync::Weak<Mutex<HashMap<CallRef, CallCtl>>>,
    sink: &SharedSink,
) {
    while let Ok(report) = reports.recv() {
        let Some(sink) = sink.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            continue;
        };
        let Some(calls) = calls.upgrade() else {
            return;
        };
        let calls = lock_calls(&calls);
        let Some(ctl) = calls.get(&report.call) else {
            continue;
        };
        sink.put(ReplicaUpdate {
            call: report.call,
            tenant: ctl.tenant.clone(),
            part: ReplicaPart::Indexes,
            public: indexes_to_json(&report),
            secret: None,
        });
    }
}

fn leg_record(cfg: &LegConfig, key_ref: &mut impl FnMut(&KeySpec) -> KeyRef) -> LegRecord {
    LegRecord {
        secure: cfg.secure,
        rx: cfg.rx.as_ref().map(&mut *key_ref),
        tx: cfg.tx.as_ref().map(&mut *key_ref),
        rtcp_mux: cfg.rtcp_mux,
        sdp_rtp: cfg.sdp_rtp,
        sdp_rtcp: cfg.sdp_rtcp,
    }
}

fn side_str(side: LegSide) -> &'static str {
    match side {
        LegSide::Caller => "caller",
        LegSide::Callee => "callee",
    }
}

fn mode_str(m: SrtpMode) -> &'static str {
    match m {
        SrtpMode::Required => "required",
        SrtpMode::Optional => "optional",
        SrtpMode::Plain => "plain",
    }
}

fn policy_record(p: &LegPolicy) -> LegPolicyRecord {
    LegPolicyRecord {
        srtp: mode_str(p.srtp).to_string(),
        suites: p.suites.clone(),
    }
}

fn pending_record(p: &Pending, key_ref: &mut impl FnMut(&KeySpec) -> KeyRef) -> PendingRecord {
    let media = p
        .media
        .iter()
        .map(|m| {
            m.as_ref().map(|m| PendingMediaRecord {
                from_proto: m.from_proto.as_str().to_string(),
                from_crypto: m.from_crypto.as_ref().map(|(tag, k)| (*tag, key_ref(k))),
                from_mux: m.from_mux,
                from_sdp_rtp: m.from_sdp_rtp,
                from_sdp_rtcp: m.from_sdp_rtcp,
                to_secure: m.to_secure,
                offered: m
                    .offered
                    .iter()
                    .map(|o| {
                        let k = KeySpec {
                            profile: o.profile,
                            key: o.key.clone(),
                            mki: None,
                        };
                        (o.tag, key_ref(&k))
                    })
                    .collect(),
            })
        })
        .collect();
    PendingRecord {
        from: side_str(p.from).to_string(),
        caller: policy_record(&p.policy.caller),
        callee: policy_record(&p.policy.callee),
        max_streams: p.policy.max_streams,
        bandwidth_kbps: p.policy.bandwidth_kbps,
        media,
    }
}

fn spec_record(s: &TapSpec) -> TapSpecRecord {
    TapSpecRecord {
        legs: s.legs.as_str().to_string(),
        transport: match s.transport {
            TapTransport::Rtp => "rtp".to_string(),
            TapTransport::Srtp(suite) => suite.as_str().to_string(),
        },
        destination: s.destination,
    }
}

fn spec_of(r: &TapSpecRecord) -> Result<TapSpec, RecordError> {
    let legs: TapLegs = r
        .legs
        .parse()
        .map_err(|_| RecordError::Invalid("tap legs"))?;
    let transport = if r.transport == "rtp" {
        TapTransport::Rtp
    } else {
        let suite: TapSuite = r
            .transport
            .parse()
            .map_err(|_| RecordError::Invalid("tap suite"))?;
        TapTransport::Srtp(suite)
    };
    Ok(TapSpec {
        legs,
        transport,
        destination: r.destination,
    })
}

// ---------------------------------------------------------------------------------------
// Restore.

fn key_spec(keys: &KeyTable, r: &KeyRef) -> Result<KeySpec, RecordError> {
    let (profile, key, mki) = keys.get(r)?;
    Ok(KeySpec { profile, key, mki })
}

fn leg_config(keys: &KeyTable, r: &LegRecord) -> Result<LegConfig, RecordError> {
    Ok(LegConfig {
        secure: r.secure,
        rx: r.rx.as_ref().map(|k| key_spec(keys, k)).transpose()?,
        tx: r.tx.as_ref().map(|k| key_spec(keys, k)).transpose()?,
        rtcp_mux: r.rtcp_mux,
        sdp_rtp: r.sdp_rtp,
        sdp_rtcp: r.sdp_rtcp,
    })
}

fn side_of(s: &str) -> Result<LegSide, RecordError> {
    match s {
        "caller" => Ok(LegSide::Caller),
        "callee" => Ok(LegSide::Callee),
        _ => Err(RecordError::Invalid("leg side")),
    }
}

fn policy_of(r: &LegPolicyRecord) -> Result<LegPolicy, RecordError> {
    let srtp = match r.srtp.as_str() {
        "required" => SrtpMode::Required,
        "optional" => SrtpMode::Optional,
        "plain" => SrtpMode::Plain,
        _ => return Err(RecordError::Invalid("SRTP mode")),
    };
    Ok(LegPolicy {
        srtp,
        suites: r.suites.clone(),
    })
}

fn pending_of(keys: &KeyTable, r: &PendingRecord) -> Result<Pending, RecordError> {
    let mut media = Vec::with_capacity(r.media.len());
    for m in &r.media {
        let Some(m) = m else {
            media.push(None);
            continue;
        };
        let from_crypto = match &m.from_crypto {
            Some((tag, k)) => Some((*tag, key_spec(keys, k)?)),
            None => None,
        };
        let mut offered = Vec::with_capacity(m.offered.len());
        for (tag, k) in &m.offered {
            let (profile, key, _) = keys.get(k)?;
            offered.push(CryptoOut {
                tag: *tag,
                profile,
                key,
            });
        }
        media.push(Some(PendingMedia {
            from_proto: RtpProto::parse(&m.from_proto)
                .ok_or(RecordError::Invalid("RTP profile"))?,
            from_crypto,
            from_mux: m.from_mux,
            from_sdp_rtp: m.from_sdp_rtp,
            from_sdp_rtcp: m.from_sdp_rtcp,
            to_secure: m.to_secure,
            offered,
        }));
    }
    Ok(Pending {
        from: side_of(&r.from)?,
        policy: MediaPolicy {
            caller: policy_of(&r.caller)?,
            callee: policy_of(&r.callee)?,
            max_streams: r.max_streams,
            bandwidth_kbps: r.bandwidth_kbps,
            record: None,
        },
        media,
    })
}

/// A restored stream: its control state, and its worker setup when committed.
fn restore_stream(
    engine: &MediaEngine,
    index: usize,
    r: &StreamRecord,
    keys: &KeyTable,
) -> Result<(StreamCtl, Option<StreamSetup>), MediaError> {
    let pool_ip = engine.inner.settings.bind_address;
    let pool = &engine.inner.pool;
    let bind = |port: u16| {
        ports::bind_stored(pool, pool_ip, SocketAddr::new(r.address, port))
            .map_err(|_| MediaError::NoPorts)
    };
    let pair: [BoundPair; 2] = [bind(r.ports[0])?, bind(r.ports[1])?];
    let mut our_keys: [Vec<_>; 2] = Default::default();
    for (leg, refs) in r.our_keys.iter().enumerate() {
        for k in refs {
            let (profile, key, _) = keys.get(k).map_err(bad)?;
            our_keys[leg].push((profile, key));
        }
    }
    let legs = match &r.legs {
        Some([a, b]) => Some([
            leg_config(keys, a).map_err(bad)?,
            leg_config(keys, b).map_err(bad)?,
        ]),
        None => None,
    };
    let mut ctl = StreamCtl {
        ports: r.ports,
        sockets: None,
        our_keys,
        committed: false,
        counters: Default::default(),
        legs: legs.clone(),
    };
    match legs {
        Some(legs) if r.committed => {
            ctl.committed = true;
            let setup = StreamSetup {
                index,
                sockets: Some(pair),
                legs,
                counters: ctl.counters.clone(),
            };
            Ok((ctl, Some(setup)))
        }
        _ => {
            // Offered, not answered: the answer commits it here.
            ctl.sockets = Some(pair);
            Ok((ctl, None))
        }
    }
}

/// A restored tap: its worker setup and control state.
fn restore_tap(
    call: CallRef,
    tenant: &TenantId,
    r: &TapRecord,
    keys: &KeyTable,
) -> Result<(TapSetup, TapCtl), MediaError> {
    let spec = spec_of(&r.spec).map_err(bad)?;
    let socket = tap_socket(spec.destination)
        .map_err(|e| MediaError::NotAcceptable(format!("restored tap: {e}")))?;
    let (srtp, key) = match (spec.transport, r.key) {
        (TapTransport::Rtp, _) => (None, None),
        (TapTransport::Srtp(suite), Some(slot)) => {
            let profile = tap_profile(suite);
            let key = keys.get_raw(slot, profile).map_err(bad)?;
            let ctx = || {
                SrtpContext::new(profile, &key, SrtpConfig::default())
                    .map_err(|e| MediaError::NotAcceptable(format!("restored tap key: {e}")))
            };
            (Some([ctx()?, ctx()?]), Some(key))
        }
        (TapTransport::Srtp(_), None) => {
            return Err(bad(RecordError::Invalid("SRTP tap without a key")))
        }
    };
    let (setup, mut ctl) = tap_pair(TapId(r.id), (call, tenant), spec, socket, (srtp, None));
    ctl.key = key;
    Ok((setup, ctl))
}

/// What a record restores to, before it is installed.
struct Restored {
    ctl: CallCtl,
    setups: Vec<StreamSetup>,
    taps: Vec<(TapSetup, TapCtl)>,
}

impl MediaEngine {
    fn build_restored(
        &self,
        call: CallRef,
        tenant: &TenantId,
        rec: &MediaRecord,
        keys: &KeyTable,
    ) -> Result<Restored, MediaError> {
        if rec.streams.len() > crate::sdp::MAX_MEDIA_LINES {
            return Err(bad(RecordError::Invalid("too many streams")));
        }
        let mut streams = Vec::with_capacity(rec.streams.len());
        let mut setups = Vec::new();
        for (i, s) in rec.streams.iter().enumerate() {
            match s {
                None => streams.push(None),
                Some(s) => {
                    // On error the pairs bound so far close and return to the pool here.
                    let (ctl, setup) = restore_stream(self, i, s, keys)?;
                    streams.push(Some(ctl));
                    setups.extend(setup);
                }
            }
        }
        let pending = rec
            .pending
            .as_ref()
            .map(|p| pending_of(keys, p))
            .transpose()
            .map_err(bad)?;
        let record = rec.record.as_ref().map(spec_of).transpose().map_err(bad)?;
        let mut taps = Vec::with_capacity(rec.taps.len());
        for t in rec.taps.iter().take(crate::relay::MAX_TAPS_PER_CALL) {
            taps.push(restore_tap(call, tenant, t, keys)?);
        }
        let workers = self.inner.workers.len().max(1);
        let ctl = CallCtl {
            tenant: tenant.clone(),
            worker: self.inner.next_worker.fetch_add(1, Ordering::Relaxed) % workers,
            streams,
            pending,
            origin: rec.origin.map(|o| OriginState {
                session_id: o.session_id,
                version: o.version,
                last: None,
            }),
            format: rec.format.clone(),
            record,
            recorded_line: rec.recorded_line,
            formats: Default::default(),
            bandwidth_kbps: rec.bandwidth_kbps,
        };
        Ok(Restored { ctl, setups, taps })
    }

    fn install_restored(
        &self,
        call: CallRef,
        r: Restored,
        progress: Option<IndexReport>,
    ) -> Result<(), MediaError> {
        let Restored { ctl, setups, taps } = r;
        let mut calls = lock_calls(&self.inner.calls);
        if calls.contains_key(&call) {
            return Err(MediaError::NotAcceptable(
                "the call already has media on this node".into(),
            ));
        }
        let Some(w) = self.worker(ctl.worker) else {
            return Err(MediaError::NoPorts);
        };
        let (n_streams, n_taps) = (setups.len(), taps.len());
        let mut all_taps = lock_taps(&self.inner.taps);
        let mut tap_setups = Vec::with_capacity(taps.len());
        for (setup, entry) in taps {
            if all_taps.contains_key(&setup.id) {
                tracing::warn!(%call, tap = %setup.id, "restored tap id in use here; tap not resumed");
                continue;
            }
            all_taps.insert(setup.id, entry);
            tap_setups.push(setup);
        }
        let ids: Vec<TapId> = tap_setups.iter().map(|t| t.id).collect();
        let sent = (setups.is_empty() && tap_setups.is_empty())
            || w.send(Command::Restore {
                call,
                streams: setups,
                taps: tap_setups,
                progress: progress.map(Box::new),
            });
        if !sent {
            for id in ids {
                all_taps.remove(&id);
            }
            tracing::error!(%call, "media worker is gone");
            return Err(MediaError::NoPorts);
        }
        drop(all_taps);
        if ctl.bandwidth_kbps > 0 {
            let workers = self.inner.workers.len().max(1) as f64;
            w.send(Command::Bandwidth {
                call,
                tenant: ctl.tenant.clone(),
                bytes_per_second: f64::from(ctl.bandwidth_kbps) * 1000.0 / 8.0 / workers,
            });
        }
        tracing::info!(%call, tenant = %ctl.tenant, streams = n_streams, taps = n_taps,
            "media restored from the replica (hot standby takeover)");
        calls.insert(call, ctl);
        if let Some(ctl) = calls.get(&call) {
            // This node now owns the call: its parts are written from here.
            self.replicate(call, ctl);
        }
        Ok(())
    }
}

impl MediaTakeover for MediaEngine {
    fn restore(
        &self,
        call: CallRef,
        tenant: &TenantId,
        media: &[u8],
        secret: &SecretBytes,
        indexes: Option<&[u8]>,
    ) -> Result<(), MediaError> {
        let fail = |e: MediaError| {
            tracing::warn!(%call, %tenant, error = %e, "media restore refused");
            e
        };
        let rec = MediaRecord::parse(media).map_err(bad).map_err(fail)?;
        let keys = KeyTable::from_secret(secret).map_err(bad).map_err(fail)?;
        let progress = indexes
            .map(|b| indexes_from_json(call, b))
            .transpose()
            .map_err(bad)
            .map_err(fail)?;
        if lock_calls(&self.inner.calls).contains_key(&call) {
            return Err(fail(MediaError::NotAcceptable(
                "the call already has media on this node".into(),
            )));
        }
        let restored = self
            .build_restored(call, tenant, &rec, &keys)
            .map_err(fail)?;
        self.install_restored(call, restored, progress)
            .map_err(fail)
    }
}
