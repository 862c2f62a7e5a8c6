//! This node's local share of each tenant's limits, used while Redis does not answer:
//! calls per second `rate / live nodes` (burst likewise, at least one), concurrent calls
//! and media streams `limit / live nodes` counted against this node's own live calls and
//! streams; and the check of streams a live call adds mid-call (against the last
//! cluster-wide count, never waiting on Redis). Sans-IO: `now` is
//! passed in.
//!
//! The shares of all live nodes add up to at most the limit; entering a fallback episode
//! starts each share bucket full, which is the "one burst of slack" the bound allows.
//!
//! Owns: per-tenant share buckets and this node's live-call counts. Must not: talk to
//! Redis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sbc_core::admission::{Refusal, RefusalCause, TokenBucket, QUOTA_RETRY_AFTER};
use sbc_core::cluster::{rate_share, share_of};
use sbc_core::config::Limits;
use sbc_core::tenant::TenantId;

#[derive(Debug)]
struct TenantShare {
    bucket: TokenBucket,
    /// The (rate, burst, nodes) the bucket was made for.
    made_for: (u64, u32, u32),
}

/// One leased quantity (calls or media streams) of every tenant: what this node holds
/// and what Redis counted last.
#[derive(Debug, Default)]
struct Held {
    live: HashMap<TenantId, u32>,
    /// Per tenant, from the last exact count: (cluster-wide, this node's then).
    seen: HashMap<TenantId, (u32, u32)>,
}

impl Held {
    fn add(&mut self, tenant: &TenantId, n: u32) {
        if n > 0 {
            let v = self.live.entry(tenant.clone()).or_default();
            *v = v.saturating_add(n);
        }
    }

    fn sub(&mut self, tenant: &TenantId, n: u32) {
        if let Some(v) = self.live.get_mut(tenant) {
            *v = v.saturating_sub(n);
            if *v == 0 {
                self.live.remove(tenant);
            }
        }
    }

    fn live(&self, tenant: &TenantId) -> u32 {
        self.live.get(tenant).copied().unwrap_or(0)
    }

    fn note(&mut self, tenant: &TenantId, cluster: u32) {
        let own = self.live(tenant);
        self.seen.insert(tenant.clone(), (cluster, own));
    }

    /// What this node held when Redis last counted plus its part of the headroom left
    /// then (`(limit - cluster) / nodes`); `limit / nodes` if Redis never counted.
    fn share(&self, tenant: &TenantId, limit: u32, nodes: u32) -> u32 {
        match self.seen.get(tenant) {
            Some((cluster, own)) => own + share_of(limit.saturating_sub(*cluster), nodes),
            None => share_of(limit, nodes),
        }
    }
}

/// Share state of every tenant.
#[derive(Debug, Default)]
pub struct LocalShare {
    shares: HashMap<TenantId, TenantShare>,
    calls: Held,
    streams: Held,
}

impl LocalShare {
    /// A fallback episode starts: every share bucket starts full again.
    pub fn reset_buckets(&mut self) {
        self.shares.clear();
    }

    /// This node holds one more call of `tenant`, with `streams` media streams.
    pub fn call_started(&mut self, tenant: &TenantId, streams: u32) {
        self.calls.add(tenant, 1);
        self.streams.add(tenant, streams);
    }

    /// One call of `tenant` with `streams` media streams ended here.
    pub fn call_ended(&mut self, tenant: &TenantId, streams: u32) {
        self.calls.sub(tenant, 1);
        self.streams.sub(tenant, streams);
    }

    /// An exact count saw `calls` live calls of `tenant` cluster-wide (this node's
    /// included) and, when counted, `streams` live media streams.
    pub fn note_exact(&mut self, tenant: &TenantId, calls: u32, streams: Option<u32>) {
        self.calls.note(tenant, calls);
        if let Some(s) = streams {
            self.streams.note(tenant, s);
        }
    }

    /// The most calls of `tenant` this node may hold in a fallback among `nodes` nodes:
    /// what it held when Redis last answered plus its part of the headroom left then
    /// (`(limit - cluster) / nodes`), so nodes that held more than `limit / nodes` do not
    /// push the sum past the limit; `limit / nodes` if Redis never counted this tenant.
    pub fn concurrent_share(&self, tenant: &TenantId, limit: u32, nodes: u32) -> u32 {
        self.calls.share(tenant, limit, nodes)
    }

    /// The same for media streams.
    pub fn stream_share(&self, tenant: &TenantId, limit: u32, nodes: u32) -> u32 {
        self.streams.share(tenant, limit, nodes)
    }

    /// May a live call of `tenant` add `extra` media streams under `limit` (above 0),
    /// decided without Redis? Exact mode: the cluster-wide count Redis gave last (at a
    /// heartbeat or an admission) with this node's part of it replaced by what it holds
    /// now; other nodes' additions since then are not seen (the documented bound).
    /// Fallback: this node's share of the limit, as for a new call.
    pub fn may_add_streams(
        &self,
        tenant: &TenantId,
        extra: u32,
        limit: u32,
        nodes: u32,
        fallback: bool,
    ) -> bool {
        let own = self.live_streams(tenant);
        if fallback {
            return own.saturating_add(extra) <= self.stream_share(tenant, limit, nodes);
        }
        let estimate = match self.streams.seen.get(tenant) {
            Some((cluster, own_then)) => cluster.saturating_sub(*own_then).saturating_add(own),
            None => own,
        };
        estimate.saturating_add(extra) <= limit
    }

    /// A live call of `tenant` added `extra` media streams here.
    pub fn streams_added(&mut self, tenant: &TenantId, extra: u32) {
        self.streams.add(tenant, extra);
    }

    /// Tenants whose cluster-wide count is worth refreshing (seen or held here).
    pub fn known_tenants(&self) -> Vec<TenantId> {
        let mut t: Vec<TenantId> = self
            .calls
            .seen
            .keys()
            .chain(self.calls.live.keys())
            .cloned()
            .collect();
        t.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        t.dedup();
        t
    }

    /// Calls of `tenant` this node holds.
    pub fn live(&self, tenant: &TenantId) -> u32 {
        self.calls.live(tenant)
    }

    /// Media streams of `tenant` this node holds.
    pub fn live_streams(&self, tenant: &TenantId) -> u32 {
        self.streams.live(tenant)
    }

    /// Decide a call of `tenant` opening `streams` media streams from this node's share
    /// among `nodes` live nodes.
    pub fn decide(
        &mut self,
        tenant: &TenantId,
        limits: &Limits,
        streams: u32,
        nodes: u32,
        now: Instant,
    ) -> Result<(), Refusal> {
        if self.live(tenant) >= self.concurrent_share(tenant, limits.max_concurrent_calls, nodes) {
            return Err(Refusal {
                cause: RefusalCause::ConcurrentCalls,
                retry_after: QUOTA_RETRY_AFTER,
            });
        }
        let max_streams = limits.max_media_streams;
        if max_streams > 0
            && self.live_streams(tenant).saturating_add(streams)
                > self.stream_share(tenant, max_streams, nodes)
        {
            return Err(Refusal {
                cause: RefusalCause::MediaStreams,
                retry_after: QUOTA_RETRY_AFTER,
            });
        }
        let (rate, burst) = rate_share(limits.calls_per_second, limits.call_burst, nodes);
        let key = (rate.to_bits(), burst, nodes);
        let share = self
            .shares
            .entry(tenant.clone())
            .or_insert_with(|| TenantShare {
                bucket: TokenBucket::new(rate, burst),
                made_for: key,
            });
        if share.made_for != key {
            share.bucket.set_limits(rate, burst);
            share.made_for = key;
        }
        share.bucket.try_take(now).map_err(|wait| Refusal {
            cause: RefusalCause::CallRate,
            retry_after: wait.max(Duration::from_millis(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cps: f64, burst: u32, max: u32) -> Limits {
        Limits {
            calls_per_second: cps,
            call_burst: burst,
            max_concurrent_calls: max,
            ..Limits::default()
        }
    }

    #[test]
    fn concurrency_share_counts_this_nodes_calls() {
        let t = TenantId::from("t");
        let mut s = LocalShare::default();
        let l = limits(1000.0, 1000, 20);
        let now = Instant::now();
        // 3 nodes: 6 each.
        for _ in 0..6 {
            assert!(s.decide(&t, &l, 0, 3, now).is_ok());
            s.call_started(&t, 0);
        }
        let r = s.decide(&t, &l, 0, 3, now).expect_err("share full");
        assert_eq!(r.cause, RefusalCause::ConcurrentCalls);
        s.call_ended(&t, 0);
        assert!(s.decide(&t, &l, 0, 3, now).is_ok());
        // Fewer live nodes: a larger share.
        s.call_started(&t, 0);
        assert!(s.decide(&t, &l, 0, 2, now).is_ok());
        s.call_ended(&t, 0);
        s.call_ended(&t, 0);
        s.call_ended(&t, 0); // more ends than starts never goes negative
        for _ in 0..10 {
            s.call_ended(&t, 0);
        }
        assert_eq!(s.live(&t), 0);
    }

    #[test]
    fn headroom_share_keeps_the_sum_under_the_limit() {
        let t = TenantId::from("t");
        // Node A held 12 and node B 8 of a limit of 20 when Redis went away.
        let mut a = LocalShare::default();
        let mut b = LocalShare::default();
        for _ in 0..12 {
            a.call_started(&t, 0);
        }
        for _ in 0..8 {
            b.call_started(&t, 0);
        }
        a.note_exact(&t, 20, None);
        b.note_exact(&t, 20, None);
        let l = limits(1000.0, 1000, 20);
        let now = Instant::now();
        assert!(a.decide(&t, &l, 0, 2, now).is_err());
        assert!(
            b.decide(&t, &l, 0, 2, now).is_err(),
            "10 would be B's plain share"
        );
        // With 6 of headroom, each of 2 nodes gets 3 more.
        for _ in 0..6 {
            a.call_ended(&t, 0);
        }
        a.note_exact(&t, 14, None);
        assert_eq!(a.concurrent_share(&t, 20, 2), 6 + 3);
        assert_eq!(LocalShare::default().concurrent_share(&t, 20, 3), 6);
    }

    #[test]
    fn stream_share_counts_this_nodes_streams() {
        let t = TenantId::from("t");
        let l = Limits {
            max_media_streams: 12,
            ..limits(1000.0, 1000, 100)
        };
        let now = Instant::now();
        // Never counted, 3 nodes: 4 streams each, calls of 2 streams: 2 calls.
        let mut s = LocalShare::default();
        for _ in 0..2 {
            assert!(s.decide(&t, &l, 2, 3, now).is_ok());
            s.call_started(&t, 2);
        }
        let r = s.decide(&t, &l, 2, 3, now).expect_err("stream share full");
        assert_eq!(r.cause, RefusalCause::MediaStreams);
        assert_eq!(r.retry_after, QUOTA_RETRY_AFTER);
        // A call without media still fits; one with 2 streams after one ended.
        assert!(s.decide(&t, &l, 0, 3, now).is_ok());
        s.call_ended(&t, 2);
        assert_eq!(s.live_streams(&t), 2);
        assert!(s.decide(&t, &l, 2, 3, now).is_ok());
        // Counted by Redis: 10 of 12 in use, this node held 2: 2 + (2 / 2) = 3.
        s.note_exact(&t, 1, Some(10));
        assert_eq!(s.stream_share(&t, 12, 2), 3);
        assert!(s.decide(&t, &l, 1, 2, now).is_ok());
        assert!(s.decide(&t, &l, 2, 2, now).is_err());
        // No limit: streams never refuse.
        let free = limits(1000.0, 1000, 100);
        assert!(s.decide(&t, &free, 60, 2, now).is_ok());
        // Never negative.
        for _ in 0..5 {
            s.call_ended(&t, 7);
        }
        assert_eq!(s.live_streams(&t), 0);
        assert_eq!(s.live(&t), 0);
    }

    #[test]
    fn added_streams_are_checked_against_the_last_count() {
        let t = TenantId::from("t");
        let mut s = LocalShare::default();
        // This node holds one call of 2 streams; Redis counted 6 of them cluster-wide.
        s.call_started(&t, 2);
        s.note_exact(&t, 3, Some(6));
        // Limit 8: the other nodes' 4 + this node's 2 + 2 more fits, 3 more does not.
        assert!(s.may_add_streams(&t, 2, 8, 2, false));
        assert!(!s.may_add_streams(&t, 3, 8, 2, false));
        s.streams_added(&t, 2);
        assert_eq!(s.live_streams(&t), 4);
        assert!(
            !s.may_add_streams(&t, 1, 8, 2, false),
            "own additions count at once"
        );
        // Never counted: this node's own streams only.
        let u = TenantId::from("u");
        assert!(s.may_add_streams(&u, 8, 8, 2, false));
        assert!(!s.may_add_streams(&u, 9, 8, 2, false));
        // Fallback: the share (held 4 when Redis counted 6 of 8... after the add, the
        // seen count is still 6 with 2 own then: 2 + (8 - 6) / 2 = 3 < 4 held).
        assert!(!s.may_add_streams(&t, 1, 8, 2, true));
        // The call ends with all its streams.
        s.call_ended(&t, 4);
        assert_eq!(s.live_streams(&t), 0);
    }

    #[test]
    fn rate_share_is_rate_over_nodes() {
        let t = TenantId::from("t");
        let mut s = LocalShare::default();
        let l = limits(30.0, 9, 1000);
        let t0 = Instant::now();
        // 3 nodes: 10/s, burst 3.
        let admitted = (0..10)
            .filter(|_| s.decide(&t, &l, 0, 3, t0).is_ok())
            .count();
        assert_eq!(admitted, 3);
        let r = s.decide(&t, &l, 0, 3, t0).expect_err("empty");
        assert_eq!(r.cause, RefusalCause::CallRate);
        assert_eq!(r.retry_after, Duration::from_millis(100));
        // One second later: 10 more at most (burst 3 caps what rests).
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..20)
            .filter(|_| s.decide(&t, &l, 0, 3, t1).is_ok())
            .count();
        assert_eq!(admitted, 3);
        // Over 2 s of steady arrivals at 100/s: ~20 admitted.
        let mut n = 0;
        for i in 0..200u64 {
            if s.decide(&t, &l, 0, 3, t1 + Duration::from_millis(10 * i))
                .is_ok()
            {
                n += 1;
            }
        }
        assert!((19..=21).contains(&n), "{n}");
        // A new episode starts full.
        s.reset_buckets();
        let admitted = (0..10)
            .filter(|_| s.decide(&t, &l, 0, 3, t1).is_ok())
            .count();
        assert_eq!(admitted, 3);
    }
}
