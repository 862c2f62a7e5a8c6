//! Audit events of the protocol crates (a SIPREC recording's life; a hot standby's
//! takeover and fencing) and the hand-off that takes them to the audit log.
//!
//! Owns: [`RecordingAudit`] (one event: tenant, call, kind, SRS target, outcome), the
//! [`AuditSink`] trait the admin plane's hash-chained log implements, and [`AuditQueue`],
//! a bounded queue drained by one thread so the caller (the SIP core loop) never waits
//! on a file write.
//!
//! Must not: format or chain lines (sbc-admin's `AuditLog` does), or block the sender: a
//! full queue drops the event, counts it ([`AuditQueue::dropped`] and
//! `sbc_audit_events_dropped_total{kind}`) and the caller logs it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use crate::tenant::TenantId;

/// Events waiting for the writer thread. A recording makes a handful of events in its
/// life (start, pause, resume, stop); 4096 covers ~1000 calls starting at once while the
/// disk stalls, a burst well above the calls-per-second the bench (`sip_calls`) drives.
pub const AUDIT_QUEUE: usize = 4096;

/// What happened to a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingEvent {
    Started,
    Stopped,
    StoppedBySrs,
    Paused,
    Resumed,
    Failed,
}

impl RecordingEvent {
    /// The word in the audit line's path (`recording/<word>`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingEvent::Started => "started",
            RecordingEvent::Stopped => "stopped",
            RecordingEvent::StoppedBySrs => "stopped_by_srs",
            RecordingEvent::Paused => "paused",
            RecordingEvent::Resumed => "resumed",
            RecordingEvent::Failed => "failed",
        }
    }
}

/// One recording event for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingAudit {
    pub tenant: TenantId,
    /// The call, as the admin plane names it.
    pub call: String,
    pub event: RecordingEvent,
    /// The SRS target (its URI).
    pub srs: String,
    /// The SIP status that decided it (an SRS's refusal), 0 when none did.
    pub status: u16,
}

/// What happened in the cluster (hot standby, issue #16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    /// This node claimed its peer's calls.
    TakenOver,
    /// Another node owns some of this node's calls: they were dropped here.
    Fenced,
}

impl ClusterEvent {
    /// The word in the audit line's path (`cluster/<word>`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterEvent::TakenOver => "taken_over",
            ClusterEvent::Fenced => "fenced",
        }
    }
}

/// One cluster event for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAudit {
    pub event: ClusterEvent,
    /// This node.
    pub node: String,
    /// The node it stands by for (empty when none).
    pub peer: String,
    /// Calls concerned.
    pub calls: u32,
    /// A short free-text outcome (counts, reason); never call state or keys.
    pub detail: String,
}

/// Where audit events are written (sbc-admin's `AuditLog`).
pub trait AuditSink: Send + Sync {
    /// Write one event; an error means it was not recorded.
    fn recording(&self, event: &RecordingAudit) -> std::io::Result<()>;
    /// Write one cluster event. The default records nothing and says so (an error the
    /// queue logs), so a sink that forgot it is visible.
    fn cluster(&self, event: &ClusterAudit) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "this audit sink does not record cluster events ({})",
                event.event.as_str()
            ),
        ))
    }
}

/// One queued event.
#[derive(Debug)]
enum Queued {
    Recording(RecordingAudit),
    Cluster(ClusterAudit),
}

impl Queued {
    /// The `kind` label of `sbc_audit_events_dropped_total` ([`AUDIT_DROP_KINDS`]).
    fn kind(&self) -> &'static str {
        match self {
            Queued::Recording(_) => "recording",
            Queued::Cluster(_) => "cluster",
        }
    }
}

/// The closed label set of `sbc_audit_events_dropped_total` (the catalog uses it).
pub const AUDIT_DROP_KINDS: [&str; 2] = ["recording", "cluster"];

/// A bounded queue to an [`AuditSink`], drained by its own thread.
#[derive(Debug, Clone)]
pub struct AuditQueue {
    tx: SyncSender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl AuditQueue {
    /// Start the writer thread; it ends when every clone of the queue is dropped.
    pub fn start(sink: Arc<dyn AuditSink>) -> std::io::Result<AuditQueue> {
        AuditQueue::with_capacity(sink, AUDIT_QUEUE)
    }

    /// [`AuditQueue::start`] with another bound (tests).
    pub fn with_capacity(sink: Arc<dyn AuditSink>, cap: usize) -> std::io::Result<AuditQueue> {
        let (tx, rx) = sync_channel::<Queued>(cap);
        std::thread::Builder::new()
            .name("sbc-audit".into())
            .spawn(move || {
                for ev in rx {
                    let (written, what) = match &ev {
                        Queued::Recording(r) => (sink.recording(r), r.event.as_str()),
                        Queued::Cluster(c) => (sink.cluster(c), c.event.as_str()),
                    };
                    if let Err(e) = written {
                        tracing::error!(error = %e, event = what, "audit write failed");
                    }
                }
            })?;
        Ok(AuditQueue {
            tx,
            dropped: Arc::default(),
        })
    }

    /// Queue an event without waiting; false (and counted) when the queue is full or the
    /// writer is gone.
    pub fn send(&self, event: RecordingAudit) -> bool {
        self.queue(Queued::Recording(event))
    }

    /// Queue a cluster event without waiting; false (and counted) as [`AuditQueue::send`].
    pub fn send_cluster(&self, event: ClusterAudit) -> bool {
        self.queue(Queued::Cluster(event))
    }

    fn queue(&self, event: Queued) -> bool {
        let kind = event.kind();
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sbc_audit_events_dropped_total", "kind" => kind).increment(1);
                false
            }
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// A sink that blocks until released, then records what it got.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
        got: Mutex<Vec<RecordingEvent>>,
    }

    impl AuditSink for Gate {
        fn recording(&self, event: &RecordingAudit) -> std::io::Result<()> {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
            self.got.lock().unwrap().push(event.event);
            Ok(())
        }
    }

    fn ev(event: RecordingEvent) -> RecordingAudit {
        RecordingAudit {
            tenant: TenantId::from("t"),
            call: "c".into(),
            event,
            srs: "sips:srs".into(),
            status: 0,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let gate = Arc::new(Gate::default());
        let q = AuditQueue::with_capacity(gate.clone(), 1).unwrap();
        // The writer takes one and blocks on the gate; the queue holds one more.
        let sent: Vec<bool> = (0..10)
            .map(|_| q.send(ev(RecordingEvent::Started)))
            .collect();
        assert!(sent.iter().filter(|s| !**s).count() >= 8);
        assert_eq!(q.dropped() as usize, sent.iter().filter(|s| !**s).count());
        // The drops reach the metric too (counted on the sending thread).
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            assert!(!q.send_cluster(ClusterAudit {
                event: ClusterEvent::TakenOver,
                node: "a".into(),
                peer: "b".into(),
                calls: 1,
                detail: String::new(),
            }));
        });
        let snap = snapshotter.snapshot().into_vec();
        let (k, _, _, v) = snap
            .iter()
            .find(|(k, _, _, _)| k.key().name() == "sbc_audit_events_dropped_total")
            .unwrap();
        assert!(k.key().labels().any(|l| l.value() == "cluster"));
        assert_eq!(v, &metrics_util::debugging::DebugValue::Counter(1));
        *gate.open.lock().unwrap() = true;
        gate.cv.notify_all();
        // Once the writer drains, the queue takes events again.
        let mut accepted = false;
        for _ in 0..200 {
            if q.send(ev(RecordingEvent::Stopped)) {
                accepted = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(accepted, "the queue drains once the writer is free");
        drop(q);
        for _ in 0..200 {
            if gate.got.lock().unwrap().last() == Some(&RecordingEvent::Stopped) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the writer never wrote the last event");
    }

    /// Records the cluster events it gets.
    struct Cluster(Mutex<Vec<ClusterEvent>>);

    impl AuditSink for Cluster {
        fn recording(&self, _: &RecordingAudit) -> std::io::Result<()> {
            Ok(())
        }
        fn cluster(&self, event: &ClusterAudit) -> std::io::Result<()> {
            self.0.lock().unwrap().push(event.event);
            Ok(())
        }
    }

    #[test]
    fn cluster_events_reach_the_sink_and_the_default_says_it_records_none() {
        let sink = Arc::new(Cluster(Mutex::default()));
        let q = AuditQueue::start(sink.clone()).unwrap();
        let ev = |event| ClusterAudit {
            event,
            node: "b".into(),
            peer: "a".into(),
            calls: 3,
            detail: "claimed:3".into(),
        };
        assert!(q.send_cluster(ev(ClusterEvent::TakenOver)));
        assert!(q.send_cluster(ev(ClusterEvent::Fenced)));
        for _ in 0..200 {
            if sink.0.lock().unwrap().len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            *sink.0.lock().unwrap(),
            [ClusterEvent::TakenOver, ClusterEvent::Fenced]
        );
        // A sink without a cluster method: the default reports it does not record them.
        struct RecordingsOnly;
        impl AuditSink for RecordingsOnly {
            fn recording(&self, _: &RecordingAudit) -> std::io::Result<()> {
                Ok(())
            }
        }
        let e = RecordingsOnly
            .cluster(&ev(ClusterEvent::Fenced))
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("fenced"), "{e}");
    }
}
