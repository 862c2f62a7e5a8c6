//! Hot standby, worker side (issue #16): the SRTP progress of each call (per stream, leg
//! and SSRC, the rollover counter and highest sequence number of the receive and send
//! contexts, and the SRTCP indexes; likewise for SRTP taps) reported to the control
//! side, and installed into a restored call's fresh contexts.
//!
//! When: a call is reported at the first tick (100 ms) after its outbound RTP sequence
//! number entered the upper half (passed 0x8000, so the record holds the rollover counter
//! a whole half cycle before the wrap), after its keys changed, and at least every
//! `index_refresh`. The packet path only compares one bit of the sequence number with the
//! leg's last one and sets a flag; reports are built at the tick and leave through a
//! bounded channel with `try_send` (a full channel drops the report and counts it, the
//! next one supersedes it).
//!
//! Must not: block, allocate on the packet path, or carry a key.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_core::media::CallRef;
use sbc_core::tap::TapId;

use super::{CallIo, LegState, TapSetup, Worker};
use crate::srtp::{SrtpContext, SsrcProgress};

/// Reports waiting for the control side: one per call per refresh, a few thousand calls
/// per worker per minute at most; 1024 absorbs a refresh of every call of a loaded worker
/// while the control side writes (it only serializes and queues to the sink).
pub const INDEX_QUEUE: usize = 1024;

/// On restore, each sending context's SRTCP index is set this far past the stored one, so
/// no SRTCP index the dead node may have used after its last report is reused under the
/// same key. The report is at most `index_refresh` old (default 60 s); a leg relays its
/// peer's RTCP, typically one compound packet per 5 s and, for video with feedback, a few
/// hundred a second: 2^20 covers 17,000 packets a second for 60 s and still leaves the
/// 31-bit index space room for 2,000 takeovers of the same key.
pub const SRTCP_RESTORE_MARGIN: u32 = 1 << 20;

/// One SRTP context's progress, per SSRC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegProgress {
    /// What the leg's peer sent us (its key).
    pub rx: Vec<SsrcProgress>,
    /// What we sent the leg's peer (our key).
    pub tx: Vec<SsrcProgress>,
    /// The latched RTP and RTCP peers.
    pub latched_rtp: Option<SocketAddr>,
    pub latched_rtcp: Option<SocketAddr>,
}

/// One stream's progress, per leg (0: caller, 1: callee).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamProgress {
    pub index: usize,
    pub legs: [LegProgress; 2],
}

/// An SRTP tap's sending progress, per leg context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapProgress {
    pub id: TapId,
    pub legs: [Vec<SsrcProgress>; 2],
}

/// A call's SRTP progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexReport {
    pub call: CallRef,
    pub streams: Vec<StreamProgress>,
    pub taps: Vec<TapProgress>,
}

/// Where a worker sends its reports, and how often it must.
#[derive(Debug, Clone)]
pub struct IndexReporter {
    pub tx: SyncSender<IndexReport>,
    /// The refresh interval in milliseconds; 0: no replica sink, nothing is reported.
    pub refresh_ms: Arc<AtomicU64>,
}

/// Metric of reports a full channel dropped.
pub(super) fn dropped_counter() -> metrics::Counter {
    metrics::counter!("sbc_media_index_reports_dropped_total")
}

fn progress(ctx: Option<&SrtpContext>, tx: bool) -> Vec<SsrcProgress> {
    let mut out = Vec::new();
    if let Some(c) = ctx {
        if tx {
            c.tx_progress(&mut out);
        } else {
            c.rx_progress(&mut out);
        }
    }
    out
}

fn leg_progress(leg: &LegState) -> LegProgress {
    LegProgress {
        rx: progress(leg.rx.as_ref().map(|(_, c)| c), false),
        tx: progress(leg.tx.as_ref().map(|(_, c)| c), true),
        latched_rtp: leg.rtp.latched,
        latched_rtcp: leg.rtcp.latched,
    }
}

/// A leg latched another peer since the last report (checked at the tick, not per packet).
fn latch_moved(c: &CallIo) -> bool {
    c.streams
        .iter()
        .flatten()
        .flat_map(|s| &s.legs)
        .any(|l| l.state.rtp.latched != l.latch_reported)
}

/// The call's progress (and latches), or `None` when it has no stream nor tap.
fn report_of(call: CallRef, c: &mut CallIo) -> Option<IndexReport> {
    for l in c.streams.iter_mut().flatten().flat_map(|s| &mut s.legs) {
        l.latch_reported = l.state.rtp.latched;
    }
    let streams: Vec<StreamProgress> = c
        .streams
        .iter()
        .enumerate()
        .filter_map(|(index, s)| s.as_ref().map(|s| (index, s)))
        .map(|(index, s)| StreamProgress {
            index,
            legs: [
                leg_progress(&s.legs[0].state),
                leg_progress(&s.legs[1].state),
            ],
        })
        .collect();
    let taps: Vec<TapProgress> = c
        .taps
        .iter()
        .filter_map(|t| {
            t.srtp.as_ref().map(|[a, b]| TapProgress {
                id: t.id,
                legs: [progress(Some(a), true), progress(Some(b), true)],
            })
        })
        .collect();
    (!streams.is_empty() || !taps.is_empty()).then_some(IndexReport {
        call,
        streams,
        taps,
    })
}

impl Worker {
    /// At the tick: reports the calls that are due (see the module docs).
    pub(super) fn report_indexes(&mut self, now: Instant) {
        let Some(reporter) = self.params.indexes.as_ref() else {
            return;
        };
        let refresh = reporter.refresh_ms.load(Ordering::Relaxed);
        if refresh == 0 {
            return;
        }
        let refresh = Duration::from_millis(refresh);
        for (call, c) in self.calls.iter_mut() {
            let stale = now.saturating_duration_since(c.index_at) >= refresh;
            if !c.index_due && !stale && !latch_moved(c) {
                continue;
            }
            c.index_due = false;
            c.index_at = now;
            let Some(report) = report_of(*call, c) else {
                continue;
            };
            match reporter.tx.try_send(report) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    // The next report of this call supersedes it: due again next tick.
                    c.index_due = true;
                    self.counters.index_dropped.increment(1);
                }
                // The control side is gone (engine shutting down).
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// Installs a restored call's progress into its fresh contexts (before any packet).
    pub(super) fn apply_progress(&mut self, report: &IndexReport) {
        let call = report.call;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        for p in &report.streams {
            let Some(Some(s)) = c.streams.get_mut(p.index) else {
                continue;
            };
            for (io, lp) in s.legs.iter_mut().zip(&p.legs) {
                // Sent to until an authenticated packet latches (the peer was silent for
                // longer than anyone's relatch time: `last_seen` is unset).
                io.state.rtp.latched = lp.latched_rtp;
                io.state.rtcp.latched = lp.latched_rtcp;
                io.latch_reported = lp.latched_rtp;
                let rx = io.state.rx.as_mut().map(|(_, ctx)| ctx);
                restore_all(rx, &lp.rx, false, call);
                let tx = io.state.tx.as_mut().map(|(_, ctx)| ctx);
                restore_all(tx, &lp.tx, true, call);
            }
        }
        for tp in &report.taps {
            if let Some(t) = c.taps.iter_mut().find(|t| t.id == tp.id) {
                restore_tap(t, tp, call);
            }
        }
    }
}

fn restore_tap(t: &mut TapSetup, tp: &TapProgress, call: CallRef) {
    if let Some(ctxs) = t.srtp.as_mut() {
        for (ctx, p) in ctxs.iter_mut().zip(&tp.legs) {
            restore_all(Some(ctx), p, true, call);
        }
    }
}

/// Installs `progress` into `ctx`; a sending context's SRTCP index moves
/// [`SRTCP_RESTORE_MARGIN`] past the stored one.
fn restore_all(ctx: Option<&mut SrtpContext>, progress: &[SsrcProgress], tx: bool, call: CallRef) {
    let Some(ctx) = ctx else {
        return;
    };
    for p in progress {
        let mut done = ctx.restore_ssrc(tx, p.ssrc, p.roc, p.seq);
        if tx && done.is_ok() {
            let next = p
                .srtcp_index
                .max(1)
                .saturating_add(SRTCP_RESTORE_MARGIN)
                .min(0x7fff_ffff);
            done = ctx.set_srtcp_index(p.ssrc, next);
        }
        if let Err(e) = done {
            tracing::warn!(%call, ssrc = p.ssrc, error = %e, "restored SRTP index not installed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::srtp::{MasterKey, SrtpConfig, SrtpProfile};

    fn ctx() -> SrtpContext {
        let p = SrtpProfile::AesCm128HmacSha1_80;
        let k = MasterKey::from_concatenated(p, &[7u8; 30]).unwrap();
        SrtpContext::new(p, &k, SrtpConfig::default()).unwrap()
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[1; 160]);
        p.resize(p.len() + 32, 0);
        p
    }

    #[test]
    fn a_restored_sender_continues_across_the_wrap_like_the_original() {
        // The original context sends 0xfff0.. and wraps; the restored one got the record
        // at 0x8000 (before the wrap) and sees its first packet after the wrap.
        let mut original = ctx();
        let mut rx = ctx();
        let mut seq = 0x7ff0u16;
        while seq != 0x0010 {
            let mut b = rtp(seq);
            let n = original.protect_rtp(&mut b, 172).unwrap();
            rx.unprotect_rtp(&mut b[..n]).unwrap();
            seq = seq.wrapping_add(1);
        }
        let mut restored = ctx();
        restore_all(
            Some(&mut restored),
            &[SsrcProgress {
                ssrc: 9,
                roc: 0,
                seq: 0x8000,
                srtcp_index: 1,
            }],
            true,
            CallRef(1),
        );
        for seq in 0x0010..0x0020u16 {
            let mut b = rtp(seq);
            let n = restored.protect_rtp(&mut b, 172).unwrap();
            rx.unprotect_rtp(&mut b[..n])
                .expect("ROC 1 like the far end");
        }
        let mut p = Vec::new();
        restored.tx_progress(&mut p);
        assert_eq!((p[0].roc, p[0].seq), (1, 0x1f));
        assert_eq!(p[0].srtcp_index, 1 + SRTCP_RESTORE_MARGIN);
    }
}
