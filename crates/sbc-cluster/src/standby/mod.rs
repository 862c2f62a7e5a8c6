//! Hot standby store (issue #16): this node's calls replicated to Redis, its peer's calls
//! tailed into a warm copy, and the takeover that claims them.
//!
//! - [`writer`]: the [`ReplicaSink`] (a coalescing, bounded book of each live call's
//!   latest parts, never blocking the caller) and the task that writes it (one Lua script
//!   per call: owner-checked HSET, call set, change stream), republishes everything when
//!   Redis came back empty, and checks at each heartbeat that this node still owns its
//!   calls (fencing).
//! - [`tailer`]: with `peer`, reads the peer's change stream from a resumable id into the
//!   warm copy, reloading the peer's whole call set after any reconnect or a trim past
//!   its id.
//! - [`claim`]: [`StandbyControl::take_over`]: one script claims the peer's calls
//!   (owner + epoch compare-and-set, quota leases moved), the secrets are opened, the
//!   calls handed to the [`sbc_core::standby::CallInstaller`].
//! - [`crypto`]: the cluster key-encryption key sealing SRTP keys.
//!
//! Owns: the standby's Redis connections (one for the writer, one for the tailer, one per
//! takeover), the book, the warm copy. Must not: parse or log the parts (their owners
//! version them), print a secret, or be called from the packet path (the media relay
//! reports index progress through its own channel to the engine's control side).

pub mod claim;
pub mod crypto;
pub mod script;
pub mod tailer;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sbc_core::audit::{AuditQueue, ClusterAudit, ClusterEvent};
use sbc_core::config::{ClusterSettings, StandbySettings};
use sbc_core::media::CallRef;
use sbc_core::standby::{
    ReplicaSink, SharedInstaller, SharedReplicaSink, StandbyControl, StandbyStatus, TakeoverFuture,
    TakeoverSummary,
};
use tracing::warn;

use crate::{ClusterError, RedisCluster};
use crypto::Kek;
use script::StandbyKeys;
use tailer::WarmCall;
use writer::Book;

/// Why calls were fenced (the `reason` label of `sbc_cluster_calls_fenced_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReason {
    /// A write was refused: another node owns the call.
    WriteRefused,
    /// The heartbeat's ownership check found the call owned elsewhere (or claimed and
    /// ended there).
    OwnershipLost,
}

impl FenceReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceReason::WriteRefused => "write_refused",
            FenceReason::OwnershipLost => "ownership_lost",
        }
    }
    pub const ALL: [FenceReason; 2] = [FenceReason::WriteRefused, FenceReason::OwnershipLost];
}

/// Why the tailer reloaded the peer's whole call set (the `reason` label of
/// `sbc_cluster_standby_reloads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadReason {
    /// A (re)connect: entries may have been missed, or Redis restarted.
    Reconnect,
    /// The peer's stream was trimmed past the last entry read.
    Trimmed,
}

impl ReloadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadReason::Reconnect => "reconnect",
            ReloadReason::Trimmed => "trimmed",
        }
    }
    pub const ALL: [ReloadReason; 2] = [ReloadReason::Reconnect, ReloadReason::Trimmed];
}

/// State shared by the sink, the writer, the tailer and the takeover.
pub(crate) struct Node {
    pub settings: ClusterSettings,
    pub standby: StandbySettings,
    pub keys: StandbyKeys,
    pub kek: Kek,
    pub leases: Option<Arc<RedisCluster>>,
    pub installer: Mutex<Option<SharedInstaller>>,
    pub audit: Mutex<Option<Arc<AuditQueue>>>,
    /// This node's live calls (latest parts), what is not yet written, removals.
    pub book: Mutex<Book>,
    /// Wakes the writer (a permit is kept if it is busy: no lost wake-up).
    pub wake: tokio::sync::Notify,
    /// The peer's calls by id.
    pub warm: Mutex<HashMap<String, WarmCall>>,
    /// Age of the newest stream entry read, ms; `u64::MAX` before the first.
    pub lag_ms: AtomicU64,
    /// Whole reloads of the peer's calls, by [`ReloadReason`] index.
    pub reloads: [AtomicU64; 2],
    pub last_takeover: Mutex<Option<TakeoverSummary>>,
    /// One takeover at a time.
    pub taking_over: tokio::sync::Mutex<()>,
    /// This process's marker value.
    pub run_id: String,
    /// Set when the node stops: its tasks end.
    pub stop: tokio::sync::watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the state consistent between statements: carry on after a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }

    pub(crate) fn warm(&self) -> MutexGuard<'_, HashMap<String, WarmCall>> {
        lock(&self.warm)
    }

    pub(crate) fn installer(&self) -> Option<SharedInstaller> {
        lock(&self.installer).clone()
    }

    pub(crate) fn audit(&self, event: ClusterEvent, calls: u32, detail: String) {
        let queue = lock(&self.audit).clone();
        let Some(queue) = queue else { return };
        let ev = ClusterAudit {
            event,
            node: self.settings.node_id.clone(),
            peer: self.standby.peer.clone().unwrap_or_default(),
            calls,
            detail,
        };
        if !queue.send_cluster(ev) {
            warn!(
                event = "audit_dropped",
                what = event.as_str(),
                "audit queue full: cluster event not recorded"
            );
        }
    }

    /// Another node owns these calls now: drop them from the book, tell the installer,
    /// count, log and audit.
    pub(crate) fn fence(&self, calls: Vec<CallRef>, reason: FenceReason) {
        if calls.is_empty() {
            return;
        }
        {
            let mut book = self.book();
            for c in &calls {
                book.forget(*c);
            }
        }
        let n = calls.len();
        metrics::counter!("sbc_cluster_calls_fenced_total", "reason" => reason.as_str())
            .increment(n as u64);
        warn!(
            event = "standby_fenced",
            calls = n,
            reason = reason.as_str(),
            "another node owns these calls now: dropped here without any SIP message"
        );
        self.audit(
            ClusterEvent::Fenced,
            u32::try_from(n).unwrap_or(u32::MAX),
            reason.as_str().to_string(),
        );
        match self.installer() {
            Some(i) => i.fence(calls),
            None => warn!(
                event = "standby_fence_no_installer",
                calls = n,
                "no call installer set: fenced calls cannot be dropped"
            ),
        }
    }
}

/// One call of the warm copy, as [`StandbyNode::warm_calls`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmView {
    /// `<origin node>:<call ref>`.
    pub id: String,
    pub tenant: String,
    pub epoch: u64,
    /// The hash fields it holds (parts, and `media_secret` when a sealed secret is there).
    pub parts: Vec<&'static str>,
}

/// This node's side of hot standby: the replica sink for its own calls, and with
/// `[cluster.standby] peer` the tailer and the takeover of the peer's calls.
pub struct StandbyNode {
    node: Arc<Node>,
}

impl std::fmt::Debug for StandbyNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandbyNode")
            .field("node_id", &self.node.settings.node_id)
            .field("peer", &self.node.standby.peer)
            .finish()
    }
}

impl StandbyNode {
    /// Reads `settings.standby`'s key file (64 hex digits; an error naming the file if
    /// missing, short or unreadable), then starts the writer and, with `peer`, the tailer
    /// on the current tokio runtime. They connect in the background (the same endpoint
    /// and Sentinel handling as [`RedisCluster`]): this never waits on Redis.
    pub fn start(
        settings: &ClusterSettings,
        leases: Option<Arc<RedisCluster>>,
    ) -> Result<Arc<StandbyNode>, ClusterError> {
        let standby = settings
            .standby
            .clone()
            .ok_or_else(|| ClusterError::Config("[cluster.standby] is not set".into()))?;
        let kek =
            Kek::from_file(&standby.key_file).map_err(|e| ClusterError::Config(e.to_string()))?;
        let node = Arc::new(Node {
            keys: StandbyKeys::new(&settings.key_prefix),
            settings: settings.clone(),
            kek,
            leases,
            installer: Mutex::new(None),
            audit: Mutex::new(None),
            book: Mutex::new(Book::default()),
            wake: tokio::sync::Notify::new(),
            warm: Mutex::new(HashMap::new()),
            lag_ms: AtomicU64::new(u64::MAX),
            reloads: Default::default(),
            last_takeover: Mutex::new(None),
            taking_over: tokio::sync::Mutex::new(()),
            run_id: format!("{:016x}", rand::random::<u64>()),
            stop: tokio::sync::watch::channel(false).0,
            standby,
        });
        tokio::spawn(writer::run(node.clone()));
        if node.standby.peer.is_some() {
            tokio::spawn(tailer::run(node.clone()));
        }
        Ok(Arc::new(StandbyNode { node }))
    }

    /// The sink the B2BUA and the media engine give their parts to.
    pub fn sink(self: &Arc<Self>) -> SharedReplicaSink {
        self.clone()
    }

    /// Who restores claimed calls and drops fenced ones (the SIP server).
    pub fn set_installer(&self, installer: SharedInstaller) {
        *lock(&self.node.installer) = Some(installer);
    }

    /// Where takeover and fencing events are audited.
    pub fn set_audit(&self, audit: Arc<AuditQueue>) {
        *lock(&self.node.audit) = Some(audit);
    }

    /// The admin plane's handle (takeover, status).
    pub fn control(self: &Arc<Self>) -> Arc<dyn StandbyControl> {
        self.clone()
    }

    /// Calls of the peer in the warm copy, sorted by id (tests and the admin plane's
    /// detail view).
    pub fn warm_calls(&self) -> Vec<WarmView> {
        let mut v: Vec<WarmView> = self
            .node
            .warm()
            .iter()
            .map(|(id, w)| WarmView {
                id: id.clone(),
                tenant: w.tenant.clone(),
                epoch: w.epoch,
                parts: w.part_names(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Whole reloads of the peer's calls so far for `reason`.
    pub fn reloads(&self, reason: ReloadReason) -> u64 {
        self.node.reloads[reason as usize].load(Ordering::Relaxed)
    }

    /// Calls this node replicates now (its own and those it took over).
    pub fn replicated_calls(&self) -> usize {
        self.node.book().len()
    }
}

impl StandbyNode {
    /// Stop the writer and tailer (also on drop). What is not written yet is lost.
    pub fn stop(&self) {
        self.node.stop.send_replace(true);
    }
}

impl Drop for StandbyNode {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ReplicaSink for StandbyNode {
    fn put(&self, update: sbc_core::standby::ReplicaUpdate) {
        if self.node.book().put(&self.node.settings.node_id, update) {
            self.node.wake.notify_one();
        }
    }

    fn remove(&self, call: CallRef) {
        if self.node.book().remove(call) {
            self.node.wake.notify_one();
        }
    }

    fn lease(&self, call: CallRef, ticket: sbc_core::cluster::Ticket) {
        if self.node.book().lease(call, ticket) {
            self.node.wake.notify_one();
        }
    }
}

impl StandbyControl for StandbyNode {
    fn take_over(&self) -> TakeoverFuture<'_> {
        Box::pin(claim::take_over(self.node.clone()))
    }

    fn status(&self) -> StandbyStatus {
        let lag = self.node.lag_ms.load(Ordering::Relaxed);
        StandbyStatus {
            peer: self.node.standby.peer.clone().unwrap_or_default(),
            warm_calls: u32::try_from(self.node.warm().len()).unwrap_or(u32::MAX),
            lag_ms: (lag != u64::MAX).then_some(lag),
            last_takeover: lock(&self.node.last_takeover).clone(),
        }
    }
}
