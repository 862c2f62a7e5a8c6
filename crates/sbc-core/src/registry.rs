//! The call registry: what calls are in progress, as the admin plane sees them; and the
//! drain / readiness flags shared between the gateway and the admin plane.
//!
//! Owns: a map from an opaque [`CallId`] to what is known of a call (tenant, start time,
//! state, caller and callee, its legs and their media counters). The SIP side records calls
//! here ([`CallRegistry::register`], the `set_*` / `add_*` hooks, [`CallRegistry::remove`]);
//! the admin plane reads copies ([`CallRegistry::snapshot`], [`CallRegistry::get`]).
//!
//! Must not: do I/O, read a clock (the start time is given by the caller), or hand out the
//! SIP Call-IDs of a call's legs: those stay inside the registry (the SIP side can look a
//! call up by one with [`CallRegistry::find_by_sip_call_id`]), so no snapshot, and so no
//! admin answer, can leak a dialog identifier.
//!
//! Locking: one mutex around the map, held for a hash lookup or a copy of the snapshot
//! set, never across I/O. Snapshots are copies, so readers never block writers for long.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::tenant::TenantId;

/// Most calls the registry holds at once. Admission bounds calls per tenant; this bounds
/// the sum, so a configuration with many large tenants cannot grow the map without end
/// (a snapshot of 100,000 calls is ~20 MB of JSON, the most an operator list should be).
pub const MAX_CALLS: usize = 100_000;

/// A call's identifier in the registry and the admin API: 16 hex digits, unpredictable,
/// unrelated to any SIP Call-ID. The SIP side registers each call under its
/// [`CallRef`](crate::media::CallRef)'s text ([`CallId::from_call_ref`],
/// [`CallRegistry::register_as`]), so logs, the API and the audit log name a call by the
/// same string; [`CallRegistry::register`] makes one of its own (a keyed hash of a
/// counter). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(Arc<str>);

impl CallId {
    /// The id of the call the signaling side numbers `call`: its 16 hex digits.
    pub fn from_call_ref(call: crate::media::CallRef) -> CallId {
        CallId(Arc::from(call.to_string()))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for CallId {
    /// Any text; ids that the registry never made simply match no call.
    fn from(s: &str) -> Self {
        CallId(Arc::from(s))
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({})", &self.0)
    }
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallState {
    /// INVITE received, no final 2xx yet (trying, ringing).
    Setup,
    /// Answered (2xx and ACK).
    Established,
}

impl CallState {
    /// A stable name for the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Setup => "setup",
            CallState::Established => "established",
        }
    }
}

/// Which side of the B2BUA a leg is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegDirection {
    /// From the tenant's trunk to us.
    Inbound,
    /// From us to the route target.
    Outbound,
}

impl LegDirection {
    /// A stable name for the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LegDirection::Inbound => "inbound",
            LegDirection::Outbound => "outbound",
        }
    }
}

/// Media counters of one leg. All zero until the media relay reports them: the binary
/// copies the relay's counters in once a second (`MediaControl::counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaCounters {
    /// RTP packets received from this leg's peer that passed SRTP authentication.
    pub packets_received: u64,
    /// RTP packets sent to this leg's peer.
    pub packets_sent: u64,
    /// Packets the peer's sequence numbers show as lost.
    pub packets_lost: u64,
}

/// What the SIP side knows when it records a call.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub tenant: TenantId,
    /// When the INVITE arrived (wall clock, for display; the registry reads no clock).
    pub start: SystemTime,
    /// The caller's number (user part of From / P-Asserted-Identity).
    pub caller: String,
    /// The callee's number (user part of the Request-URI).
    pub callee: String,
    /// The SIP Call-ID of the inbound leg. Kept inside the registry.
    pub inbound_sip_call_id: String,
}

/// A copy of one leg, without its SIP Call-ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegSnapshot {
    pub direction: LegDirection,
    pub counters: MediaCounters,
}

/// A copy of one call, as the admin plane may show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSnapshot {
    pub id: CallId,
    pub tenant: TenantId,
    pub start: SystemTime,
    pub state: CallState,
    pub caller: String,
    pub callee: String,
    /// The inbound leg first, then the outbound leg once it exists.
    pub legs: Vec<LegSnapshot>,
}

/// Why a call could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// [`MAX_CALLS`] calls are recorded already.
    #[error("call registry full ({0} calls)")]
    Full(usize),
    /// [`CallRegistry::register_as`] with an id that is recorded already.
    #[error("call {0} is recorded already")]
    Duplicate(CallId),
}

#[derive(Debug)]
struct Leg {
    direction: LegDirection,
    sip_call_id: String,
    counters: MediaCounters,
}

#[derive(Debug)]
struct Entry {
    tenant: TenantId,
    start: SystemTime,
    state: CallState,
    caller: String,
    callee: String,
    legs: Vec<Leg>,
    /// The media side's number for this call ([`crate::media::CallRef`]), once known.
    media_ref: Option<u64>,
}

impl Entry {
    fn snapshot(&self, id: &CallId) -> CallSnapshot {
        CallSnapshot {
            id: id.clone(),
            tenant: self.tenant.clone(),
            start: self.start,
            state: self.state,
            caller: self.caller.clone(),
            callee: self.callee.clone(),
            legs: self
                .legs
                .iter()
                .map(|l| LegSnapshot {
                    direction: l.direction,
                    counters: l.counters,
                })
                .collect(),
        }
    }

    fn leg_mut(&mut self, direction: LegDirection) -> Option<&mut Leg> {
        self.legs.iter_mut().find(|l| l.direction == direction)
    }
}

/// Calls in progress. `Send + Sync`; share it as `Arc<CallRegistry>`.
#[derive(Debug)]
pub struct CallRegistry {
    calls: Mutex<HashMap<CallId, Entry>>,
    /// A randomly keyed SipHash (std seeds `RandomState` from the OS): ids are a keyed hash
    /// of `next`, so they neither repeat nor reveal how many calls other tenants made.
    id_key: RandomState,
    next: AtomicU64,
}

impl Default for CallRegistry {
    fn default() -> Self {
        CallRegistry::new()
    }
}

impl CallRegistry {
    /// An empty registry with a fresh id key.
    pub fn new() -> CallRegistry {
        CallRegistry {
            calls: Mutex::new(HashMap::new()),
            id_key: RandomState::new(),
            next: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CallId, Entry>> {
        // A poisoned lock means a panic elsewhere while holding it; every update below
        // leaves the map consistent between statements, so carry on with it.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh_id(&self, calls: &HashMap<CallId, Entry>) -> CallId {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let id = CallId(Arc::from(format!("{:016x}", self.id_key.hash_one(n))));
            // A 64-bit collision among live calls is astronomically rare; skip it anyway.
            if !calls.contains_key(&id) {
                return id;
            }
        }
    }

    /// Record a new call (state [`CallState::Setup`], one inbound leg).
    pub fn register(&self, record: CallRecord) -> Result<CallId, RegistryError> {
        let mut calls = self.lock();
        if calls.len() >= MAX_CALLS {
            return Err(RegistryError::Full(MAX_CALLS));
        }
        let id = self.fresh_id(&calls);
        Self::insert(&mut calls, id.clone(), record);
        Ok(id)
    }

    /// Record a new call under `id` (the signaling side's [`CallId::from_call_ref`]), as
    /// [`CallRegistry::register`] does otherwise.
    pub fn register_as(&self, id: CallId, record: CallRecord) -> Result<CallId, RegistryError> {
        let mut calls = self.lock();
        if calls.len() >= MAX_CALLS {
            return Err(RegistryError::Full(MAX_CALLS));
        }
        if calls.contains_key(&id) {
            return Err(RegistryError::Duplicate(id));
        }
        Self::insert(&mut calls, id.clone(), record);
        Ok(id)
    }

    fn insert(calls: &mut HashMap<CallId, Entry>, id: CallId, record: CallRecord) {
        calls.insert(
            id,
            Entry {
                tenant: record.tenant,
                start: record.start,
                state: CallState::Setup,
                caller: record.caller,
                callee: record.callee,
                legs: vec![Leg {
                    direction: LegDirection::Inbound,
                    sip_call_id: record.inbound_sip_call_id,
                    counters: MediaCounters::default(),
                }],
                media_ref: None,
            },
        );
    }

    /// Record the media side's number for a call (the `CallRef` its `MediaControl` calls
    /// use), so the admin plane can reach the call's media (recording taps). False if the
    /// call is not recorded.
    pub fn set_media_ref(&self, id: &CallId, media_ref: u64) -> bool {
        match self.lock().get_mut(id) {
            Some(e) => {
                e.media_ref = Some(media_ref);
                true
            }
            None => false,
        }
    }

    /// The media side's number for a call, if recorded.
    pub fn media_ref(&self, id: &CallId) -> Option<u64> {
        self.lock().get(id).and_then(|e| e.media_ref)
    }

    /// Copies the relay's per-leg counters of every call with media into the registry
    /// (caller's leg → inbound, callee's → outbound). The relay is asked outside the
    /// registry's lock; the registry is locked once to read and once to write.
    pub fn refresh_media_counters(&self, media: &dyn crate::media::MediaControl) {
        let refs: Vec<(CallId, u64)> = self
            .lock()
            .iter()
            .filter_map(|(id, e)| e.media_ref.map(|r| (id.clone(), r)))
            .collect();
        let counted: Vec<(CallId, [MediaCounters; 2])> = refs
            .into_iter()
            .filter_map(|(id, r)| Some((id, media.counters(crate::media::CallRef(r))?)))
            .collect();
        let mut calls = self.lock();
        for (id, legs) in counted {
            let Some(e) = calls.get_mut(&id) else {
                continue;
            };
            for (direction, counters) in [LegDirection::Inbound, LegDirection::Outbound]
                .into_iter()
                .zip(legs)
            {
                if let Some(leg) = e.leg_mut(direction) {
                    leg.counters = counters;
                }
            }
        }
    }

    /// The call whose media side number is `media_ref` (a linear scan, for admin paths).
    pub fn find_by_media_ref(&self, media_ref: u64) -> Option<CallId> {
        self.lock()
            .iter()
            .find(|(_, e)| e.media_ref == Some(media_ref))
            .map(|(id, _)| id.clone())
    }

    /// Set a call's state. False if the call is not recorded.
    pub fn set_state(&self, id: &CallId, state: CallState) -> bool {
        match self.lock().get_mut(id) {
            Some(e) => {
                e.state = state;
                true
            }
            None => false,
        }
    }

    /// Record the outbound leg (replacing an earlier one, e.g. after a retry to another
    /// target). False if the call is not recorded.
    pub fn add_outbound_leg(&self, id: &CallId, sip_call_id: String) -> bool {
        let mut calls = self.lock();
        let Some(e) = calls.get_mut(id) else {
            return false;
        };
        match e.leg_mut(LegDirection::Outbound) {
            Some(leg) => {
                leg.sip_call_id = sip_call_id;
                leg.counters = MediaCounters::default();
            }
            None => e.legs.push(Leg {
                direction: LegDirection::Outbound,
                sip_call_id,
                counters: MediaCounters::default(),
            }),
        }
        true
    }

    /// Replace a leg's media counters with the relay's current totals. False if the call or
    /// that leg is not recorded.
    pub fn set_counters(
        &self,
        id: &CallId,
        direction: LegDirection,
        counters: MediaCounters,
    ) -> bool {
        let mut calls = self.lock();
        match calls.get_mut(id).and_then(|e| e.leg_mut(direction)) {
            Some(leg) => {
                leg.counters = counters;
                true
            }
            None => false,
        }
    }

    /// Forget a call; its last snapshot, if it was recorded.
    pub fn remove(&self, id: &CallId) -> Option<CallSnapshot> {
        self.lock().remove(id).map(|e| e.snapshot(id))
    }

    /// A copy of one call.
    pub fn get(&self, id: &CallId) -> Option<CallSnapshot> {
        self.lock().get(id).map(|e| e.snapshot(id))
    }

    /// Copies of every call, or of one tenant's calls, oldest first (ties by id).
    pub fn snapshot(&self, tenant: Option<&TenantId>) -> Vec<CallSnapshot> {
        let mut out: Vec<CallSnapshot> = self
            .lock()
            .iter()
            .filter(|(_, e)| tenant.is_none_or(|t| *t == e.tenant))
            .map(|(id, e)| e.snapshot(id))
            .collect();
        out.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// The call one of whose legs has this SIP Call-ID (for the SIP side; a linear scan,
    /// meant for teardown paths that lost their `CallId`, not for every message).
    pub fn find_by_sip_call_id(&self, sip_call_id: &str) -> Option<CallId> {
        self.lock()
            .iter()
            .find(|(_, e)| e.legs.iter().any(|l| l.sip_call_id == sip_call_id))
            .map(|(id, _)| id.clone())
    }

    /// How many calls are recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no call is recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Readiness and drain flags, shared (as `Arc<DrainState>`) by the gateway, its signal
/// handler and the admin plane. Starts not ready and not draining.
///
/// The gateway sets `ready` once its listeners are bound; SIGTERM or the admin plane's
/// `POST /v1/drain` sets `draining`, which never clears: new calls get 503 and the
/// readiness probe fails, so a load balancer stops sending traffic while calls finish.
#[derive(Debug, Default)]
pub struct DrainState {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl DrainState {
    /// Not ready, not draining.
    pub fn new() -> DrainState {
        DrainState::default()
    }

    /// Mark the gateway ready (listeners bound) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the gateway said it is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Start draining; true if this call started it, false if it was draining already.
    pub fn start_drain(&self) -> bool {
        !self.draining.swap(true, Ordering::AcqRel)
    }

    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether new calls should be accepted: ready and not draining.
    pub fn accepting(&self) -> bool {
        self.is_ready() && !self.is_draining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn record(tenant: &str, at: u64, sip: &str) -> CallRecord {
        CallRecord {
            tenant: TenantId::from(tenant),
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            caller: "+15551230001".to_string(),
            callee: "+15559870002".to_string(),
            inbound_sip_call_id: sip.to_string(),
        }
    }

    #[test]
    fn register_as_uses_the_call_ref_text() {
        let r = CallRegistry::new();
        let call = crate::media::CallRef(0x00ab_cdef_0123_4567);
        let id = CallId::from_call_ref(call);
        assert_eq!(id.as_str(), "00abcdef01234567");
        let got = r
            .register_as(id.clone(), record("a", 10, "sip-a"))
            .expect("room");
        assert_eq!(got, id);
        assert_eq!(r.get(&id).map(|c| c.id), Some(id.clone()));
        assert_eq!(
            r.register_as(id.clone(), record("a", 11, "sip-b")),
            Err(RegistryError::Duplicate(id))
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn media_ref_maps_both_ways() {
        let r = CallRegistry::new();
        let a = r.register(record("a", 10, "sip-a")).expect("room");
        assert_eq!(r.media_ref(&a), None);
        assert_eq!(r.find_by_media_ref(7), None);
        assert!(r.set_media_ref(&a, 7));
        assert_eq!(r.media_ref(&a), Some(7));
        assert_eq!(r.find_by_media_ref(7), Some(a.clone()));
        assert!(!r.set_media_ref(&CallId::from("nope"), 8));
        r.remove(&a);
        assert_eq!(r.find_by_media_ref(7), None);
    }

    #[test]
    fn register_update_snapshot_remove() {
        let r = CallRegistry::new();
        assert!(r.is_empty());
        let b = r.register(record("b", 20, "sip-b")).expect("room");
        let a = r.register(record("a", 10, "sip-a")).expect("room");
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(r.len(), 2);

        let snap = r.get(&a).expect("recorded");
        assert_eq!(snap.tenant.as_str(), "a");
        assert_eq!(snap.state, CallState::Setup);
        assert_eq!(snap.caller, "+15551230001");
        assert_eq!(
            snap.legs,
            vec![LegSnapshot {
                direction: LegDirection::Inbound,
                counters: MediaCounters::default()
            }]
        );

        assert!(r.set_state(&a, CallState::Established));
        assert!(r.add_outbound_leg(&a, "sip-a-out".to_string()));
        let c = MediaCounters {
            packets_received: 7,
            packets_sent: 6,
            packets_lost: 1,
        };
        assert!(r.set_counters(&a, LegDirection::Outbound, c));
        // The outbound leg of b does not exist yet.
        assert!(!r.set_counters(&b, LegDirection::Outbound, c));
        let snap = r.get(&a).expect("recorded");
        assert_eq!(snap.state, CallState::Established);
        assert_eq!(snap.legs.len(), 2);
        assert_eq!(snap.legs[1].direction, LegDirection::Outbound);
        assert_eq!(snap.legs[1].counters, c);
        assert_eq!(snap.legs[0].counters, MediaCounters::default());

        // Oldest first; tenant filter.
        let all = r.snapshot(None);
        assert_eq!(
            all.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            vec![a.clone(), b.clone()]
        );
        let only_b = r.snapshot(Some(&TenantId::from("b")));
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].id, b);
        assert!(r.snapshot(Some(&TenantId::from("c"))).is_empty());

        // Lookup by either leg's SIP Call-ID.
        assert_eq!(r.find_by_sip_call_id("sip-a-out"), Some(a.clone()));
        assert_eq!(r.find_by_sip_call_id("sip-b"), Some(b.clone()));
        assert_eq!(r.find_by_sip_call_id("nope"), None);

        let gone = r.remove(&a).expect("was recorded");
        assert_eq!(gone.state, CallState::Established);
        assert!(r.get(&a).is_none());
        assert!(r.remove(&a).is_none());
        assert!(!r.set_state(&a, CallState::Setup));
        assert!(!r.add_outbound_leg(&a, "x".to_string()));
        assert_eq!(r.len(), 1);
        assert!(r.get(&CallId::from("not-an-id")).is_none());
    }

    #[test]
    fn ids_unique_and_unordered() {
        let r = CallRegistry::new();
        let ids: Vec<CallId> = (0..1000)
            .map(|i| r.register(record("t", i, &format!("s{i}"))).expect("room"))
            .collect();
        let set: HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), 1000);
        // Not a counter: consecutive ids are not in order (a counter would be, 999 times).
        let ascending = ids.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(ascending < 900, "{ascending} of 999 ascending");
        // A second registry keys its ids differently.
        let other = CallRegistry::new();
        let first = other.register(record("t", 0, "x")).expect("room");
        assert_ne!(first, ids[0]);
    }

    #[test]
    fn replacing_the_outbound_leg_resets_its_counters() {
        let r = CallRegistry::new();
        let id = r.register(record("t", 0, "in")).expect("room");
        assert!(r.add_outbound_leg(&id, "out1".to_string()));
        let c = MediaCounters {
            packets_received: 1,
            packets_sent: 2,
            packets_lost: 3,
        };
        assert!(r.set_counters(&id, LegDirection::Outbound, c));
        assert!(r.add_outbound_leg(&id, "out2".to_string()));
        let snap = r.get(&id).expect("recorded");
        assert_eq!(snap.legs.len(), 2);
        assert_eq!(snap.legs[1].counters, MediaCounters::default());
        assert_eq!(r.find_by_sip_call_id("out1"), None);
        assert_eq!(r.find_by_sip_call_id("out2"), Some(id));
    }

    #[test]
    fn drain_state() {
        let d = DrainState::new();
        assert!(!d.is_ready());
        assert!(!d.is_draining());
        assert!(!d.accepting());
        d.set_ready(true);
        assert!(d.accepting());
        assert!(d.start_drain());
        assert!(
            !d.start_drain(),
            "second drain reports it was already draining"
        );
        assert!(d.is_draining());
        assert!(d.is_ready());
        assert!(!d.accepting());
    }

    #[test]
    fn shared_across_threads() {
        let r = Arc::new(CallRegistry::new());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let id = r
                            .register(record(&format!("t{t}"), i, &format!("{t}-{i}")))
                            .expect("room");
                        if i % 2 == 0 {
                            assert!(r.remove(&id).is_some());
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(r.len(), 200);
        assert_eq!(r.snapshot(Some(&TenantId::from("t2"))).len(), 50);
    }
}
