//! Admission: may this tenant start a call now? Sans-IO (`now` is passed in).
//!
//! Per tenant, a token bucket bounds the call rate (in no window of length t are more than
//! `calls_per_second`·t + `call_burst` calls admitted) and a counter bounds concurrent
//! calls. An admitted call holds an [`Admitted`] proof that only this module can make; the
//! concurrent-call slot is released when it is dropped, so no path (BYE, CANCEL, 4xx,
//! timeout, a closed connection) can leak or double-release a slot.
//!
//! Cost: a hash lookup of the tenant and one uncontended mutex; see
//! `cargo bench -p sbc-core --bench admission` (10,000 tenants).

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, Limits};
use crate::tenant::TenantId;

/// Retry-After suggested when the concurrent-call quota is full: calls end on their own
/// time, so there is no exact answer; a few seconds keeps retry storms thin.
pub const QUOTA_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCause {
    /// The tenant is not configured (any more).
    UnknownTenant,
    /// The tenant's call-rate bucket is empty.
    CallRate,
    /// The tenant has `max_concurrent_calls` calls in progress.
    ConcurrentCalls,
    /// The tenant has `max_pending_invites` calls in setup.
    PendingInvites,
    /// The gateway as a whole is over its call rate or its internal queue is too deep.
    Overload,
    /// The tenant's offered media streams would pass `max_media_streams` cluster-wide
    /// (cluster admission only; a single node's engine refuses at offer time).
    MediaStreams,
}

impl RefusalCause {
    /// A stable name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCause::UnknownTenant => "unknown_tenant",
            RefusalCause::CallRate => "call_rate",
            RefusalCause::ConcurrentCalls => "concurrent_calls",
            RefusalCause::PendingInvites => "pending_invites",
            RefusalCause::Overload => "overload",
            RefusalCause::MediaStreams => "media_streams",
        }
    }

    /// Text for the SIP Reason header.
    pub fn text(self) -> &'static str {
        match self {
            RefusalCause::UnknownTenant => "tenant not configured",
            RefusalCause::CallRate => "tenant call rate limit",
            RefusalCause::ConcurrentCalls => "tenant concurrent call limit",
            RefusalCause::PendingInvites => "tenant pending INVITE limit",
            RefusalCause::Overload => "gateway overloaded",
            RefusalCause::MediaStreams => "tenant media stream limit",
        }
    }
}

/// A refusal, with when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub cause: RefusalCause,
    pub retry_after: Duration,
}

/// A token bucket: `rate` tokens per second, at most `burst` stored. Sans-IO.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            // A `now` earlier than the last one (callers on several threads) adds nothing.
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }

    /// Take one token, or say how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.check(now)?;
        self.tokens -= 1.0;
        Ok(())
    }

    /// Whether a token is there (without taking it), or how long until one is.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Change rate and depth, keeping the tokens there are (capped at the new depth).
    pub fn set_limits(&mut self, rate: f64, burst: u32) {
        self.rate = rate;
        self.burst = f64::from(burst);
        self.tokens = self.tokens.min(self.burst);
    }
}

/// One tenant's admission state, all behind one lock: a decision is one lock round trip
/// (measured: fewer atomics than separate counters, see the admission bench).
#[derive(Debug)]
struct SlotState {
    limits: Limits,
    bucket: TokenBucket,
    active: u32,
    pending: u32,
    admitted: u64,
    refused: u64,
}

/// One tenant's admission state. Shared between config generations, so a reload keeps
/// the count of running calls.
#[derive(Debug)]
struct TenantSlot {
    state: Mutex<SlotState>,
}

impl TenantSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A poisoned lock means a panic elsewhere while holding it; the state is a few
        // numbers that are consistent at every step, so carry on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A tenant's usage against its limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub active_calls: u32,
    pub pending_invites: u32,
    pub limits: Limits,
    pub admitted_total: u64,
    pub refused_total: u64,
}

/// A tenant's usage as some live component sees it (shared with the admin plane).
pub type UsageSource = Arc<dyn Fn(&TenantId) -> Option<Usage> + Send + Sync>;

/// Proof that a call was admitted; holds its concurrent-call slot until dropped.
#[derive(Debug)]
#[must_use = "dropping it releases the call's slot at once"]
pub struct Admitted {
    slot: Arc<TenantSlot>,
    pending: bool,
    /// The call's cluster-wide lease, released with the call (dropped with this).
    lease: Option<crate::cluster::LeaseGuard>,
}

impl Admitted {
    /// Hold the call's cluster-wide lease for as long as the call holds its slot.
    pub fn hold(&mut self, lease: crate::cluster::LeaseGuard) {
        self.lease = Some(lease);
    }

    /// The call's offer now opens `streams` media streams: grow its cluster lease (see
    /// [`crate::cluster::CallLease::grow_streams`]; never waits). Without a cluster lease
    /// there is nothing to check here (the media engine's per-node quota applies).
    pub fn grow_streams(&mut self, streams: u32, limit: u32) -> Result<(), Refusal> {
        match &mut self.lease {
            Some(l) => l.grow_streams(streams, limit),
            None => Ok(()),
        }
    }

    /// The call got its final answer: it no longer counts as a pending INVITE.
    pub fn answered(&mut self) {
        if std::mem::take(&mut self.pending) {
            let mut s = self.slot.lock();
            s.pending = s.pending.saturating_sub(1);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // Only `admit_call` and `admit_restored` increment, once per `Admitted`; these are
        // its decrements.
        let mut s = self.slot.lock();
        if self.pending {
            s.pending = s.pending.saturating_sub(1);
        }
        s.active = s.active.saturating_sub(1);
    }
}

/// Admission control for every tenant of one config generation.
#[derive(Debug, Default)]
pub struct Admission {
    /// Keyed by tenant ids from config (never attacker-chosen), so a fast non-keyed hash
    /// is safe here: it halves the decision cost (see the admission bench).
    slots: FxHashMap<TenantId, Arc<TenantSlot>>,
    /// The gateway-wide call rate (`overload.max_calls_per_second`), if set.
    global: Option<Mutex<TokenBucket>>,
}

impl Admission {
    /// Fresh state for the tenants of `config`.
    pub fn new(config: &Config) -> Admission {
        Admission::with_limits(config.tenants.iter().map(|t| (t.id.clone(), t.limits)))
            .with_global_rate(config.overload.max_calls_per_second)
    }

    /// Add a gateway-wide call-rate limit (calls per second, burst one second's worth);
    /// 0 means none.
    pub fn with_global_rate(mut self, calls_per_second: f64) -> Admission {
        self.global = (calls_per_second > 0.0).then(|| {
            let burst = calls_per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
            Mutex::new(TokenBucket::new(calls_per_second, burst))
        });
        self
    }

    /// Fresh state for the given tenants and limits.
    pub fn with_limits(tenants: impl IntoIterator<Item = (TenantId, Limits)>) -> Admission {
        let slots = tenants
            .into_iter()
            .map(|(id, limits)| (id, Arc::new(new_slot(limits))))
            .collect();
        Admission {
            slots,
            global: None,
        }
    }

    /// The next generation for a reloaded `config`: tenants that stay keep their running
    /// calls and bucket level under their new limits (a quota lowered below current usage
    /// refuses new calls and leaves running ones alone); new tenants start fresh; removed
    /// tenants are refused from now on while their running calls finish.
    pub fn reloaded(&self, config: &Config) -> Admission {
        self.reloaded_with(config.tenants.iter().map(|t| (t.id.clone(), t.limits)))
            .with_global_rate(config.overload.max_calls_per_second)
    }

    /// [`Admission::reloaded`] with the tenants and limits given directly.
    pub fn reloaded_with(
        &self,
        tenants: impl IntoIterator<Item = (TenantId, Limits)>,
    ) -> Admission {
        let mut slots = FxHashMap::default();
        for (id, limits) in tenants {
            let slot = match self.slots.get(&id) {
                Some(slot) => {
                    let mut s = slot.lock();
                    s.limits = limits;
                    s.bucket
                        .set_limits(limits.calls_per_second, limits.call_burst);
                    drop(s);
                    slot.clone()
                }
                None => Arc::new(new_slot(limits)),
            };
            slots.insert(id, slot);
        }
        Admission {
            slots,
            global: None,
        }
    }

    /// Admit a new call of `tenant` at `now`, or say why not. The decision's own duration
    /// (locks included) goes to `sbc_admission_decision_seconds`: the one clock read in
    /// sbc-core, which measures the decision and never feeds it (`now` does).
    pub fn admit_call(&self, tenant: &TenantId, now: Instant) -> Result<Admitted, Refusal> {
        let started = Instant::now();
        let result = self.decide(tenant, now);
        metrics::histogram!("sbc_admission_decision_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }

    fn decide(&self, tenant: &TenantId, now: Instant) -> Result<Admitted, Refusal> {
        let Some(slot) = self.slots.get(tenant) else {
            return Err(Refusal {
                cause: RefusalCause::UnknownTenant,
                retry_after: QUOTA_RETRY_AFTER,
            });
        };
        let mut global = self
            .global
            .as_ref()
            .map(|g| g.lock().unwrap_or_else(|p| p.into_inner()));
        let mut s = slot.lock();
        let result = if let Err(wait) = global.as_mut().map_or(Ok(()), |g| g.check(now)) {
            Err(Refusal {
                cause: RefusalCause::Overload,
                retry_after: wait,
            })
        } else if s.active >= s.limits.max_concurrent_calls {
            Err(Refusal {
                cause: RefusalCause::ConcurrentCalls,
                retry_after: QUOTA_RETRY_AFTER,
            })
        } else if s.pending >= s.limits.max_pending_invites {
            Err(Refusal {
                cause: RefusalCause::PendingInvites,
                retry_after: QUOTA_RETRY_AFTER,
            })
        } else {
            match s.bucket.try_take(now) {
                Ok(()) => {
                    if let Some(g) = global.as_mut() {
                        // Checked above under the same lock: a token is there.
                        let _ = g.try_take(now);
                    }
                    s.active += 1;
                    s.pending += 1;
                    Ok(())
                }
                Err(wait) => Err(Refusal {
                    cause: RefusalCause::CallRate,
                    retry_after: wait,
                }),
            }
        };
        match result {
            Ok(()) => s.admitted += 1,
            Err(_) => s.refused += 1,
        }
        drop(s);
        drop(global);
        result.map(|()| Admitted {
            slot: slot.clone(),
            pending: true,
            lease: None,
        })
    }

    /// Admit a call this node took over from a dead peer (hot standby, issue #16): it
    /// holds a concurrent-call slot like any call (and a pending-INVITE one while
    /// `pending`, an early dialog), but it is never refused for rate nor for the
    /// concurrency limit: the call is already running, and refusing it would drop a live
    /// call. It can push `active` above the limit; new calls are then refused until usage
    /// falls back. Refused only for a tenant this config does not know
    /// ([`RefusalCause::UnknownTenant`]). Not counted as admitted (it was, on its node).
    pub fn admit_restored(&self, tenant: &TenantId, pending: bool) -> Result<Admitted, Refusal> {
        let Some(slot) = self.slots.get(tenant) else {
            return Err(Refusal {
                cause: RefusalCause::UnknownTenant,
                retry_after: QUOTA_RETRY_AFTER,
            });
        };
        let mut s = slot.lock();
        s.active += 1;
        if pending {
            s.pending += 1;
        }
        drop(s);
        Ok(Admitted {
            slot: slot.clone(),
            pending,
            lease: None,
        })
    }

    /// A tenant's usage against its limits.
    pub fn usage(&self, tenant: &TenantId) -> Option<Usage> {
        let s = self.slots.get(tenant)?.lock();
        Some(Usage {
            active_calls: s.active,
            pending_invites: s.pending,
            limits: s.limits,
            admitted_total: s.admitted,
            refused_total: s.refused,
        })
    }
}

fn new_slot(limits: Limits) -> TenantSlot {
    TenantSlot {
        state: Mutex::new(SlotState {
            limits,
            bucket: TokenBucket::new(limits.calls_per_second, limits.call_burst),
            active: 0,
            pending: 0,
            admitted: 0,
            refused: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(cps: f64, burst: u32, max: u32) -> Limits {
        Limits {
            calls_per_second: cps,
            call_burst: burst,
            max_concurrent_calls: max,
            max_pending_invites: max,
            ..Limits::default()
        }
    }

    #[test]
    fn pending_invites_and_global_rate() {
        let a = TenantId::from("a");
        let b = TenantId::from("b");
        let l = Limits {
            max_pending_invites: 2,
            ..limits(1000.0, 1000, 10)
        };
        let adm = Admission::with_limits([(a.clone(), l), (b.clone(), l)]).with_global_rate(3.0);
        let now = Instant::now();
        let mut c1 = adm.admit_call(&a, now).expect("1");
        let _c2 = adm.admit_call(&a, now).expect("2");
        let r = adm.admit_call(&a, now).expect_err("2 pending");
        assert_eq!(r.cause, RefusalCause::PendingInvites);
        c1.answered();
        c1.answered(); // idempotent
        assert_eq!(
            adm.usage(&a).map(|u| (u.active_calls, u.pending_invites)),
            Some((2, 1))
        );
        // The third call of the gateway takes the last global token...
        let _c3 = adm.admit_call(&b, now).expect("3");
        // ...and the fourth, of either tenant, is refused for overload.
        let r = adm.admit_call(&a, now).expect_err("global");
        assert_eq!(r.cause, RefusalCause::Overload);
        assert!(r.retry_after > Duration::ZERO);
        // A tenant refusal does not consume a global token.
        let later = now + Duration::from_secs(1);
        let _ = adm.admit_call(&TenantId::from("nobody"), later);
        assert!(adm.admit_call(&b, later).is_ok());
        drop(c1);
        assert_eq!(
            adm.usage(&a).map(|u| (u.active_calls, u.pending_invites)),
            Some((1, 1))
        );
    }

    #[test]
    fn bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.try_take(t0 + Duration::from_millis(499)).is_err());
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_ok());
        // Never more than the depth, however long it rests.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn quota_released_on_drop_and_kept_across_reload() {
        let t = TenantId::from("a");
        let adm = Admission::with_limits([(t.clone(), limits(1000.0, 1000, 2))]);
        let now = Instant::now();
        let c1 = adm.admit_call(&t, now).expect("1");
        let c2 = adm.admit_call(&t, now).expect("2");
        let r = adm.admit_call(&t, now).expect_err("quota");
        assert_eq!(r.cause, RefusalCause::ConcurrentCalls);
        drop(c1);
        let c3 = adm.admit_call(&t, now).expect("slot freed");
        assert_eq!(adm.usage(&t).map(|u| u.active_calls), Some(2));

        // Lower the quota to 1 below the 2 running calls: they live on, new ones refused.
        let next = adm.reloaded_with([(t.clone(), limits(1000.0, 1000, 1))]);
        assert_eq!(next.usage(&t).map(|u| u.active_calls), Some(2));
        assert!(next.admit_call(&t, now).is_err());
        drop(c2);
        assert!(next.admit_call(&t, now).is_err(), "still 1 running = quota");
        drop(c3);
        let c4 = next.admit_call(&t, now).expect("under quota again");
        drop(c4);
        assert_eq!(next.usage(&t).map(|u| u.active_calls), Some(0));
        assert_eq!(
            adm.admit_call(&TenantId::from("nobody"), now)
                .map(|_| ())
                .expect_err("unknown")
                .cause,
            RefusalCause::UnknownTenant
        );
    }

    proptest! {
        /// In no window of length t are more than rate·t + burst calls admitted.
        #[test]
        fn no_window_exceeds_rate_plus_burst(
            rate in 0.5f64..200.0,
            burst in 1u32..50,
            gaps in proptest::collection::vec(0u64..50_000, 1..400),
        ) {
            let t = TenantId::from("p");
            let adm = Admission::with_limits([(t.clone(), limits(rate, burst, u32::MAX))]);
            let t0 = Instant::now();
            let mut now = t0;
            let mut admitted = Vec::new();
            for g in gaps {
                now += Duration::from_micros(g);
                if let Ok(a) = adm.admit_call(&t, now) {
                    std::mem::forget(a);
                    admitted.push(now);
                }
            }
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let window = end.duration_since(*start).as_secs_f64();
                    let n = (j - i + 1) as f64;
                    prop_assert!(n <= rate * window + f64::from(burst) + 1e-6,
                        "{n} calls in {window}s at rate {rate} burst {burst}");
                }
            }
        }

        /// Concurrent-call counts never go negative, never exceed the quota, and return
        /// to zero once every call has ended, whatever the order of ends.
        #[test]
        fn concurrency_never_leaks(ops in proptest::collection::vec(any::<(bool, u8)>(), 1..300), max in 1u32..10) {
            let t = TenantId::from("q");
            let adm = Admission::with_limits([(t.clone(), limits(1e6, 1_000_000, max))]);
            let now = Instant::now();
            let mut live: Vec<Admitted> = Vec::new();
            for (start, pick) in ops {
                if start {
                    match adm.admit_call(&t, now) {
                        Ok(a) => live.push(a),
                        Err(r) => {
                            prop_assert_eq!(r.cause, RefusalCause::ConcurrentCalls);
                            prop_assert_eq!(live.len() as u32, max);
                        }
                    }
                } else if !live.is_empty() {
                    let i = usize::from(pick) % live.len();
                    drop(live.swap_remove(i));
                }
                let usage = adm.usage(&t).map(|u| u.active_calls);
                prop_assert_eq!(usage, Some(live.len() as u32));
                prop_assert!(live.len() as u32 <= max);
            }
            live.clear();
            prop_assert_eq!(adm.usage(&t).map(|u| u.active_calls), Some(0));
        }
    }
}
