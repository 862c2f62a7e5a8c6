//! The replica sink and its writer task.
//!
//! `Book` holds the latest parts of each live call of this node (what the store must
//! hold, so a Redis that came back empty can be refilled) and which parts are not yet
//! written. `put` replaces a part and queues the call once: a later update of the same
//! part supersedes one not yet written. The writer task drains it in pipelined batches,
//! one [`script::PUT`] per call (owner-checked, so a call another node claimed is
//! refused: fenced), seals the media part's secret on the way out, and at each heartbeat
//! checks that this node still owns every call it wrote ([`script::OWNED`]).
//!
//! Owns: the book, the writer's connection, the marker. Must not: block `put` / `remove`
//! (a std mutex held for a map update; no await, no I/O), or log a part.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_core::cluster::Ticket;
use sbc_core::media::CallRef;
use sbc_core::standby::{ReplicaPart, ReplicaUpdate, SecretBytes};
use sbc_core::tenant::TenantId;
use tracing::{info, warn};

use super::script::{self, call_id, OWNED_I, PUT_I, REMOVE_I, RESET_I, SECRET_FIELD};
use super::{FenceReason, Node};
use crate::resp::Value;
use crate::{connect_with, run_scripts, with_deadline, ClusterError, Link, MAINTENANCE_TIMEOUT};

/// Most live calls the book holds: a node's calls are bounded by its tenants' limits
/// (tens of thousands on the largest deployment sized so far); past this a new call is
/// not replicated (counted in `sbc_cluster_replica_dropped_total`, logged once per
/// episode) rather than growing memory without bound. At ~2 KB of parts a call this is
/// ~200 MB at most.
pub const MAX_CALLS: usize = 100_000;
/// Calls written per pipelined round trip: 256 scripts of a few hundred bytes each fit in
/// one ~100 KB write and a Redis time slice of ~1 ms.
const WRITE_BATCH: usize = 256;
/// Batches written per wake-up before yielding to the heartbeat (the rest wakes the task
/// again at once).
const ROUNDS_PER_WAKE: usize = 16;
/// Ids checked per ownership script.
const OWNED_CHUNK: usize = 500;
/// How long a restarted process leaves the calls its previous run left in the store
/// before deleting them: its standby claims them within about a second of the VIP
/// moving (keepalived's notify runs the takeover), so 10 s leaves it ample time, and a
/// node that got its VIP back leaves dead calls in the store (and in its standby's warm
/// copy) no longer than this.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(10);
/// Wait before connecting again after a failed attempt (puts do not each try).
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// A bit per part (in [`ReplicaPart::ALL`] order) and one for the lease ticket.
const LEASE_BIT: u8 = 1 << 3;

fn bit(p: ReplicaPart) -> u8 {
    match p {
        ReplicaPart::Dialog => 1,
        ReplicaPart::Media => 2,
        ReplicaPart::Indexes => 4,
    }
}

/// One part as its owner gave it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub public: Vec<u8>,
    pub secret: Option<SecretBytes>,
}

/// One live call of this node.
#[derive(Debug)]
pub(crate) struct LiveCall {
    /// Its store id (`origin:ref`): this node for its own calls, the peer for claimed
    /// ones.
    pub id: String,
    pub tenant: TenantId,
    pub parts: [Option<Stored>; 3],
    pub lease: Option<Ticket>,
    dirty: u8,
    queued: bool,
    /// Written (or claimed) by this node: a missing hash now means another node took
    /// it and ended it.
    known: bool,
    pub epoch: u64,
}

/// One call's write, taken from the book.
pub(crate) struct Write {
    call: CallRef,
    id: String,
    tenant: String,
    known: bool,
    bits: u8,
    lease: String,
    fields: Vec<(&'static str, Vec<u8>)>,
    secret: Option<SecretBytes>,
}

/// This node's live calls.
#[derive(Debug, Default)]
pub(crate) struct Book {
    calls: HashMap<CallRef, LiveCall>,
    queue: VecDeque<CallRef>,
    removals: Vec<String>,
    /// Lease tickets given before the call's first part (bounded like the calls).
    early: HashMap<CallRef, Ticket>,
    full: bool,
}

impl Book {
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    fn enqueue(&mut self, call: CallRef) {
        if let Some(c) = self.calls.get_mut(&call) {
            if !c.queued && c.dirty != 0 {
                c.queued = true;
                self.queue.push_back(call);
            }
        }
    }

    /// Record the latest state of a part; true when the writer has work.
    pub fn put(&mut self, node: &str, u: ReplicaUpdate) -> bool {
        if !self.calls.contains_key(&u.call) {
            if self.calls.len() >= MAX_CALLS {
                metrics::counter!("sbc_cluster_replica_dropped_total").increment(1);
                if !std::mem::replace(&mut self.full, true) {
                    warn!(
                        event = "standby_book_full",
                        limit = MAX_CALLS,
                        "replica book full: new calls are not replicated until calls end"
                    );
                }
                return false;
            }
            self.calls.insert(
                u.call,
                LiveCall {
                    id: call_id(node, u.call),
                    tenant: u.tenant.clone(),
                    parts: [None, None, None],
                    lease: None,
                    dirty: 0,
                    queued: false,
                    known: false,
                    epoch: 0,
                },
            );
        }
        if let Some(c) = self.calls.get_mut(&u.call) {
            if let Some(t) = self.early.remove(&u.call) {
                c.lease = Some(t);
                c.dirty |= LEASE_BIT;
            }
            let i = ReplicaPart::ALL
                .iter()
                .position(|p| *p == u.part)
                .unwrap_or(0);
            c.parts[i] = Some(Stored {
                public: u.public,
                secret: u.secret,
            });
            c.dirty |= bit(u.part);
        }
        self.enqueue(u.call);
        true
    }

    /// The call ended: forget it and delete it from the store.
    pub fn remove(&mut self, call: CallRef) -> bool {
        self.early.remove(&call);
        match self.calls.remove(&call) {
            Some(c) => {
                self.removals.push(c.id);
                if self.calls.len() < MAX_CALLS {
                    self.full = false;
                }
                true
            }
            None => false,
        }
    }

    /// The call's quota lease ticket.
    pub fn lease(&mut self, call: CallRef, ticket: Ticket) -> bool {
        let Some(c) = self.calls.get_mut(&call) else {
            // Before the call's first part: kept until it comes.
            if self.early.len() < MAX_CALLS {
                self.early.insert(call, ticket);
            }
            return false;
        };
        c.lease = Some(ticket);
        c.dirty |= LEASE_BIT;
        self.enqueue(call);
        true
    }

    /// Fenced: forget without touching the store (another node owns it).
    pub fn forget(&mut self, call: CallRef) {
        self.calls.remove(&call);
    }

    /// A call claimed from the peer: already in the store, owned by this node at `epoch`.
    /// False if this node already has a call with that number (the installer renumbers
    /// it; its later updates then go to a new hash, see the report).
    pub fn adopt(&mut self, call: CallRef, mut live: LiveCall) -> bool {
        if self.calls.contains_key(&call) {
            return false;
        }
        live.known = true;
        self.calls.insert(call, live);
        true
    }

    pub fn take_removals(&mut self) -> Vec<String> {
        std::mem::take(&mut self.removals)
    }

    pub fn requeue_removals(&mut self, ids: Vec<String>) {
        self.removals.extend(ids);
    }

    /// Up to `max` calls' pending parts, marked clean.
    pub fn take_batch(&mut self, max: usize) -> Vec<Write> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(call) = self.queue.pop_front() else {
                break;
            };
            let Some(c) = self.calls.get_mut(&call) else {
                continue;
            };
            if !c.queued {
                continue;
            }
            c.queued = false;
            let bits = std::mem::take(&mut c.dirty);
            let mut w = Write {
                call,
                id: c.id.clone(),
                tenant: c.tenant.as_str().to_string(),
                known: c.known,
                bits,
                lease: c.lease.map(|t| format!("{:016x}", t.0)).unwrap_or_default(),
                fields: Vec::new(),
                secret: None,
            };
            for (i, p) in ReplicaPart::ALL.into_iter().enumerate() {
                if bits & bit(p) == 0 {
                    continue;
                }
                if let Some(s) = &c.parts[i] {
                    w.fields.push((p.field(), s.public.clone()));
                    if p == ReplicaPart::Media {
                        w.secret = Some(s.secret.clone().unwrap_or_default());
                    }
                }
            }
            out.push(w);
        }
        out
    }

    /// A batch did not reach Redis: its parts are pending again.
    pub fn requeue(&mut self, writes: &[Write]) {
        for w in writes {
            if let Some(c) = self.calls.get_mut(&w.call) {
                if c.id == w.id {
                    c.dirty |= w.bits;
                }
            }
            self.enqueue(w.call);
        }
    }

    fn written(&mut self, call: CallRef, id: &str, epoch: u64) {
        if let Some(c) = self.calls.get_mut(&call) {
            if c.id == id {
                c.known = true;
                c.epoch = epoch;
            }
        }
    }

    /// Redis lost the data: every call is written whole again, as new.
    pub fn republish(&mut self) -> usize {
        let calls: Vec<CallRef> = self.calls.keys().copied().collect();
        for call in &calls {
            if let Some(c) = self.calls.get_mut(call) {
                c.known = false;
                c.epoch = 0;
                for (i, p) in ReplicaPart::ALL.into_iter().enumerate() {
                    if c.parts[i].is_some() {
                        c.dirty |= bit(p);
                    }
                }
                if c.lease.is_some() {
                    c.dirty |= LEASE_BIT;
                }
            }
            self.enqueue(*call);
        }
        calls.len()
    }

    /// Calls in the store as this node's: (id, call).
    fn known(&self) -> Vec<(String, CallRef)> {
        self.calls
            .iter()
            .filter(|(_, c)| c.known)
            .map(|(r, c)| (c.id.clone(), *r))
            .collect()
    }

    fn known_count(&self) -> usize {
        self.calls.values().filter(|c| c.known).count()
    }
}

impl LiveCall {
    /// A claimed call as the book holds it.
    pub fn claimed(
        id: String,
        tenant: TenantId,
        parts: [Option<Stored>; 3],
        lease: Option<Ticket>,
        epoch: u64,
    ) -> LiveCall {
        LiveCall {
            id,
            tenant,
            parts,
            lease,
            dirty: 0,
            queued: false,
            known: true,
            epoch,
        }
    }
}

struct Writer {
    node: Arc<Node>,
    link: Option<Link>,
    /// The first connection of this process sets the marker.
    started: bool,
    /// When the previous run's leftovers are deleted (`None`: done).
    reset_at: Option<Instant>,
    /// No connection attempt before this.
    retry_at: Option<Instant>,
    /// Logged once per outage.
    down: AtomicBool,
}

/// The writer task: until the node stops.
pub(crate) async fn run(node: Arc<Node>) {
    let mut stop = node.stop.subscribe();
    let mut beat = tokio::time::interval(node.settings.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut w = Writer {
        node,
        link: None,
        started: false,
        reset_at: Some(Instant::now() + LEFTOVER_GRACE),
        retry_at: None,
        down: AtomicBool::new(false),
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = w.node.wake.notified() => w.flush().await,
            _ = beat.tick() => {
                w.check_owned().await;
                w.reset_leftovers().await;
                w.flush().await;
            }
        }
    }
}

impl Writer {
    fn fail(&mut self, e: &ClusterError) {
        metrics::counter!("sbc_cluster_redis_errors_total", "kind" => e.kind()).increment(1);
        self.link = None;
        self.retry_at = Some(Instant::now() + RECONNECT_AFTER);
        if !self.down.swap(true, Ordering::Relaxed) {
            warn!(event = "standby_writer_down", error = %e, "call replication paused: Redis not answering (retried at each heartbeat)");
        }
    }

    async fn ensure_link(&mut self) -> bool {
        if self.link.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let link = connect_with(&self.node.settings, &script::WRITER).await;
        match link {
            Ok(l) => self.link = Some(l),
            Err(e) => {
                self.fail(&e);
                return false;
            }
        }
        let r = if self.started {
            self.check_marker().await
        } else {
            self.set_marker().await
        };
        match r {
            Ok(()) => {
                self.started = true;
                if self.down.swap(false, Ordering::Relaxed) {
                    info!(event = "standby_writer_up", "call replication resumed");
                }
                true
            }
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// [`LEFTOVER_GRACE`] after start: the calls a previous run left are dead.
    async fn reset_leftovers(&mut self) {
        if self.reset_at.is_none_or(|t| Instant::now() < t) || !self.ensure_link().await {
            return;
        }
        match self.reset().await {
            Ok(()) => self.reset_at = None,
            Err(e) => self.fail(&e),
        }
    }

    async fn reset(&mut self) -> Result<(), ClusterError> {
        let n = &self.node;
        let me = &n.settings.node_id;
        let mut args = vec![
            me.clone(),
            n.keys.call_prefix(),
            n.run_id.clone(),
            n.standby.stream_maxlen.to_string(),
        ];
        args.extend(n.book().known().into_iter().map(|(id, _)| id));
        let keys = vec![n.keys.calls(me), n.keys.marker(me), n.keys.stream(me)];
        let link = self.link.as_mut().ok_or(ClusterError::Timeout)?;
        let r = with_deadline(
            MAINTENANCE_TIMEOUT,
            run_scripts(link, RESET_I, &[(keys, args)]),
        )
        .await?;
        let dead = r.first().and_then(Value::int).unwrap_or(0);
        if dead > 0 {
            info!(
                event = "standby_reset",
                calls = dead,
                "deleted the calls a previous run of this node left in the store"
            );
        }
        Ok(())
    }

    /// Reconnected: if the marker is gone, Redis lost its data; write every call again.
    async fn check_marker(&mut self) -> Result<(), ClusterError> {
        let n = self.node.clone();
        let marker = n.keys.marker(&n.settings.node_id);
        let link = self.link.as_mut().ok_or(ClusterError::Timeout)?;
        let v = with_deadline(
            MAINTENANCE_TIMEOUT,
            link.conn
                .call(&[b"SET", marker.as_bytes(), n.run_id.as_bytes(), b"NX"]),
        )
        .await?;
        match v {
            Value::Simple(s) if s == "OK" => {
                self.republished();
                Ok(())
            }
            Value::Error(e) => Err(ClusterError::Server(e)),
            _ => Ok(()),
        }
    }

    fn republished(&self) {
        let calls = self.node.book().republish();
        metrics::counter!("sbc_cluster_republish_total").increment(1);
        info!(
            event = "standby_republish",
            calls, "Redis came back without this node's data: writing every live call again"
        );
    }

    async fn flush(&mut self) {
        for _ in 0..ROUNDS_PER_WAKE {
            if !self.ensure_link().await {
                return;
            }
            let removals = self.node.book().take_removals();
            if !removals.is_empty() && !self.remove(removals).await {
                return;
            }
            let batch = self.node.book().take_batch(WRITE_BATCH);
            if batch.is_empty() {
                return;
            }
            if !self.write(batch).await {
                return;
            }
        }
        self.node.wake.notify_one();
    }

    async fn remove(&mut self, ids: Vec<String>) -> bool {
        let n = self.node.clone();
        let me = &n.settings.node_id;
        let maxlen = n.standby.stream_maxlen.to_string();
        let calls: Vec<(Vec<String>, Vec<String>)> = ids
            .iter()
            .map(|id| {
                (
                    vec![n.keys.call(id), n.keys.calls(me), n.keys.stream(me)],
                    vec![me.clone(), id.clone(), maxlen.clone()],
                )
            })
            .collect();
        let Some(link) = self.link.as_mut() else {
            n.book().requeue_removals(ids);
            return false;
        };
        match with_deadline(MAINTENANCE_TIMEOUT, run_scripts(link, REMOVE_I, &calls)).await {
            Ok(_) => true,
            Err(e) => {
                n.book().requeue_removals(ids);
                self.fail(&e);
                false
            }
        }
    }

    fn script_args(&self, w: &Write) -> (Vec<String>, Vec<Vec<u8>>) {
        let n = &self.node;
        let me = &n.settings.node_id;
        let keys = vec![
            n.keys.call(&w.id),
            n.keys.calls(me),
            n.keys.stream(me),
            n.keys.marker(me),
        ];
        let parts: Vec<&str> = w.fields.iter().map(|(f, _)| *f).collect();
        let mut args: Vec<Vec<u8>> = vec![
            me.clone().into_bytes(),
            w.tenant.clone().into_bytes(),
            w.id.clone().into_bytes(),
            n.standby.stream_maxlen.to_string().into_bytes(),
            if w.known {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            parts.join(",").into_bytes(),
            w.lease.clone().into_bytes(),
            n.run_id.clone().into_bytes(),
        ];
        for (f, v) in &w.fields {
            args.push(f.as_bytes().to_vec());
            args.push(v.clone());
        }
        if let Some(secret) = &w.secret {
            let sealed = if secret.is_empty() {
                Vec::new()
            } else {
                n.kek
                    .seal(&n.keys.aad(&w.id, ReplicaPart::Media.field()), secret)
            };
            args.push(SECRET_FIELD.as_bytes().to_vec());
            args.push(sealed);
        }
        (keys, args)
    }

    async fn write(&mut self, batch: Vec<Write>) -> bool {
        let calls: Vec<(Vec<String>, Vec<Vec<u8>>)> =
            batch.iter().map(|w| self.script_args(w)).collect();
        let Some(link) = self.link.as_mut() else {
            self.node.book().requeue(&batch);
            return false;
        };
        let replies =
            match with_deadline(MAINTENANCE_TIMEOUT, run_scripts(link, PUT_I, &calls)).await {
                Ok(r) => r,
                Err(e) => {
                    self.node.book().requeue(&batch);
                    self.fail(&e);
                    return false;
                }
            };
        let mut fenced = Vec::new();
        let mut lost = false;
        {
            let mut book = self.node.book();
            for (w, v) in batch.iter().zip(replies) {
                let nums: Vec<i64> = v
                    .array()
                    .map(|a| a.iter().filter_map(Value::int).collect())
                    .unwrap_or_default();
                match nums.first() {
                    Some(1) => {
                        let epoch = nums
                            .get(1)
                            .and_then(|e| u64::try_from(*e).ok())
                            .unwrap_or(1);
                        book.written(w.call, &w.id, epoch);
                        for p in ReplicaPart::ALL {
                            if w.bits & bit(p) != 0 {
                                metrics::counter!("sbc_cluster_replica_writes_total", "part" => p.field())
                                    .increment(1);
                            }
                        }
                    }
                    Some(0) => fenced.push(w.call),
                    _ => lost = true,
                }
            }
            if lost {
                book.requeue(&batch);
            }
            metrics::gauge!("sbc_cluster_calls_replicated").set(book.known_count() as f64);
        }
        if lost {
            if let Err(e) = self.set_marker().await {
                self.fail(&e);
                return false;
            }
            self.republished();
        }
        self.node.fence(fenced, FenceReason::WriteRefused);
        true
    }

    async fn set_marker(&mut self) -> Result<(), ClusterError> {
        let n = self.node.clone();
        let marker = n.keys.marker(&n.settings.node_id);
        let link = self.link.as_mut().ok_or(ClusterError::Timeout)?;
        match with_deadline(
            MAINTENANCE_TIMEOUT,
            link.conn
                .call(&[b"SET", marker.as_bytes(), n.run_id.as_bytes()]),
        )
        .await?
        {
            Value::Error(e) => Err(ClusterError::Server(e)),
            _ => Ok(()),
        }
    }

    /// Heartbeat: does this node still own every call it wrote?
    async fn check_owned(&mut self) {
        if !self.ensure_link().await {
            return;
        }
        let n = self.node.clone();
        let known = n.book().known();
        if known.is_empty() {
            // The marker alone: a Redis emptied under a live connection (FLUSHALL).
            if let Err(e) = self.check_marker().await {
                self.fail(&e);
            }
            return;
        }
        let me = &n.settings.node_id;
        let by_id: HashMap<&str, CallRef> = known.iter().map(|(i, c)| (i.as_str(), *c)).collect();
        let calls: Vec<(Vec<String>, Vec<String>)> = known
            .chunks(OWNED_CHUNK)
            .map(|chunk| {
                let mut args = vec![me.clone(), n.keys.call_prefix()];
                args.extend(chunk.iter().map(|(id, _)| id.clone()));
                (vec![n.keys.marker(me)], args)
            })
            .collect();
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let replies =
            match with_deadline(MAINTENANCE_TIMEOUT, run_scripts(link, OWNED_I, &calls)).await {
                Ok(r) => r,
                Err(e) => {
                    self.fail(&e);
                    return;
                }
            };
        let mut lost = Vec::new();
        let mut emptied = false;
        for v in &replies {
            let items = v.array().unwrap_or(&[]);
            match items.first().and_then(Value::int) {
                Some(1) => lost.extend(
                    items[1..]
                        .iter()
                        .filter_map(Value::text)
                        .filter_map(|id| by_id.get(id.as_str()).copied()),
                ),
                _ => emptied = true,
            }
        }
        if emptied {
            match self.set_marker().await {
                Ok(()) => self.republished(),
                Err(e) => self.fail(&e),
            }
            return;
        }
        n.fence(lost, FenceReason::OwnershipLost);
    }
}

/// The writer's pending state, for tests.
#[cfg(test)]
mod tests {
    use super::*;

    fn upd(call: u64, part: ReplicaPart, b: u8) -> ReplicaUpdate {
        ReplicaUpdate {
            call: CallRef(call),
            tenant: TenantId::from("t"),
            part,
            public: vec![b],
            secret: None,
        }
    }

    #[test]
    fn the_latest_part_wins_and_a_call_is_queued_once() {
        let mut b = Book::default();
        assert!(b.put("A", upd(1, ReplicaPart::Dialog, 1)));
        assert!(b.put("A", upd(1, ReplicaPart::Dialog, 2)));
        assert!(b.put("A", upd(1, ReplicaPart::Indexes, 3)));
        assert!(b.put("A", upd(2, ReplicaPart::Dialog, 4)));
        let w = b.take_batch(10);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].id, "A:0000000000000001");
        assert_eq!(w[0].fields, vec![("dialog", vec![2]), ("idx", vec![3])]);
        assert!(b.take_batch(10).is_empty());
        b.requeue(&w[..1]);
        assert_eq!(b.take_batch(10).len(), 1);
        assert!(b.remove(CallRef(1)));
        assert_eq!(b.take_removals(), vec!["A:0000000000000001".to_string()]);
        assert!(!b.remove(CallRef(1)));
    }

    #[test]
    fn republish_rewrites_every_part() {
        let mut b = Book::default();
        b.put("A", upd(1, ReplicaPart::Dialog, 1));
        b.put("A", upd(1, ReplicaPart::Media, 2));
        b.lease(CallRef(1), Ticket(0xab));
        let w = b.take_batch(10);
        b.written(w[0].call, &w[0].id, 1);
        assert!(b.take_batch(10).is_empty());
        assert_eq!(b.republish(), 1);
        let w = b.take_batch(10);
        assert_eq!(w.len(), 1);
        assert!(!w[0].known);
        assert_eq!(w[0].fields.len(), 2);
        assert_eq!(w[0].lease, "00000000000000ab");
    }

    #[test]
    fn a_lease_before_the_first_part_is_kept_for_it() {
        let mut b = Book::default();
        assert!(!b.lease(CallRef(5), Ticket(0x1f)));
        assert!(b.take_batch(10).is_empty());
        b.put("A", upd(5, ReplicaPart::Dialog, 1));
        let w = b.take_batch(10);
        assert_eq!(w[0].lease, "000000000000001f");
        b.lease(CallRef(6), Ticket(1));
        b.remove(CallRef(6));
        b.put("A", upd(6, ReplicaPart::Dialog, 1));
        assert_eq!(
            b.take_batch(10)[0].lease,
            "",
            "an ended call's early lease is gone"
        );
    }
}
