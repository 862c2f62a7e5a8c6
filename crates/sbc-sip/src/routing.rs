//! Tenant route tables: which targets an admitted call tries, in which order.
//!
//! Owns: longest-prefix matching of the Request-URI user part against a tenant's routes,
//! and the ordering of a route's targets into a call's candidate list: by priority (lower
//! first), weighted random order among equal priority (RFC 2782 §"Usage rules"), targets
//! that health checks or a Retry-After quarantine put out left out.
//! Must not: open connections (the transport owns one TLS connector per [`TargetId`]),
//! read a clock or draw randomness of its own (the B2BUA passes its seeded RNG, so a test
//! replays the same order).

use std::collections::HashMap;

use rand::Rng;
use sbc_core::config::Transport;
use sbc_core::config::{Failover, HealthSettings};
use sbc_core::tenant::TenantId;

/// Index of a route target in the transport's connector table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(pub usize);

/// One target of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    /// Connector to use.
    pub target: TargetId,
    /// `host` or `host:port` (IPv6 in brackets) for the outbound Request-URI.
    pub host_port: String,
    /// The URI as configured: the `target` label of trunk metrics and `/v1/trunks`.
    pub uri: String,
    /// How the target is reached: Via, Contact and the transaction timers follow it.
    pub transport: Transport,
    /// Lower first.
    pub priority: u16,
    /// Share among targets of equal priority.
    pub weight: u16,
}

/// Where one try of a call goes. One configured target gives one candidate today; a
/// target named by DNS can later expand into one candidate per resolved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Connector to use.
    pub target: TargetId,
    /// `host:port` for the outbound Request-URI.
    pub host_port: String,
    /// How it is reached.
    pub transport: Transport,
}

impl Candidate {
    /// The Request-URI (and remote target) of a call to `user_part` (`user@` or "") on
    /// this candidate: `sips:` over TLS, `sip:` over UDP, `sip:...;transport=tcp` over TCP.
    pub fn request_uri(&self, user_part: &str) -> String {
        self.transport.uri(user_part, &self.host_port)
    }
}

/// One route of one tenant.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// Prefix of the Request-URI user part; empty matches everything.
    pub prefix: String,
    /// Its targets, in config order (at least one).
    pub targets: Vec<RouteTarget>,
    /// When a call leaves a target for the next.
    pub failover: Failover,
    /// OPTIONS health checks of its targets, if configured.
    pub health: Option<HealthSettings>,
}

impl RouteEntry {
    /// A route with one target, default failover settings and no health checks.
    pub fn single(prefix: &str, target: TargetId, host_port: &str) -> RouteEntry {
        RouteEntry {
            prefix: prefix.to_string(),
            targets: vec![RouteTarget {
                target,
                host_port: host_port.to_string(),
                uri: format!("sips:{host_port}"),
                transport: Transport::Tls,
                priority: 0,
                weight: 1,
            }],
            failover: Failover::default(),
            health: None,
        }
    }

    /// The order one call tries this route's targets in: priority groups lowest first,
    /// each group in RFC 2782 weighted random order drawn from `rng`, targets for which
    /// `usable` is false left out (an empty list: none usable).
    pub fn candidates(
        &self,
        rng: &mut impl Rng,
        usable: impl Fn(TargetId) -> bool,
    ) -> Vec<Candidate> {
        let usable: Vec<&RouteTarget> = self.targets.iter().filter(|t| usable(t.target)).collect();
        sbc_dns::order::rfc2782_order(usable, |t| (t.priority, t.weight), rng)
            .into_iter()
            .map(|t| Candidate {
                target: t.target,
                host_port: t.host_port.clone(),
                transport: t.transport,
            })
            .collect()
    }
}

/// All tenants' routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    tenants: HashMap<TenantId, Vec<RouteEntry>>,
    /// Each tenant's SIPREC recording servers, in failover order (not routes: no call is
    /// routed to them).
    recorders: HashMap<TenantId, Vec<RouteTarget>>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a route for `tenant`. Routes are kept longest prefix first.
    pub fn insert(&mut self, tenant: TenantId, entry: RouteEntry) {
        let routes = self.tenants.entry(tenant).or_default();
        routes.push(entry);
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    }

    /// Set `tenant`'s SIPREC recording servers.
    pub fn set_recorders(&mut self, tenant: TenantId, targets: Vec<RouteTarget>) {
        self.recorders.insert(tenant, targets);
    }

    /// `tenant`'s SIPREC recording servers, in failover order.
    pub fn recorders(&self, tenant: &TenantId) -> &[RouteTarget] {
        self.recorders.get(tenant).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The transport of a target some route (or recorder list) names (`None`: none does).
    pub fn transport_of(&self, target: TargetId) -> Option<Transport> {
        self.tenants
            .values()
            .flatten()
            .flat_map(|r| &r.targets)
            .chain(self.recorders.values().flatten())
            .find(|t| t.target == target)
            .map(|t| t.transport)
    }

    /// The target of one of `tenant`'s routes reached at `host_port` over `transport`
    /// (a call restored on a standby finds its target by address, not by index).
    pub fn target_by_addr(
        &self,
        tenant: &TenantId,
        host_port: &str,
        transport: Transport,
    ) -> Option<&RouteTarget> {
        self.tenants
            .get(tenant)?
            .iter()
            .flat_map(|r| &r.targets)
            .find(|t| t.host_port == host_port && t.transport == transport)
    }

    /// The route for a call of `tenant` to `user` (the Request-URI user part, if any).
    pub fn lookup(&self, tenant: &TenantId, user: Option<&str>) -> Option<&RouteEntry> {
        let user = user.unwrap_or("");
        self.tenants
            .get(tenant)?
            .iter()
            .find(|r| user.starts_with(r.prefix.as_str()))
    }

    /// Every route of every tenant (tenants sorted by id, routes longest prefix first).
    pub fn iter(&self) -> impl Iterator<Item = (&TenantId, &RouteEntry)> {
        let mut tenants: Vec<&TenantId> = self.tenants.keys().collect();
        tenants.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        tenants
            .into_iter()
            .flat_map(move |t| self.tenants[t].iter().map(move |r| (t, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn entry(prefix: &str, t: usize) -> RouteEntry {
        RouteEntry::single(prefix, TargetId(t), &format!("h{t}"))
    }

    fn first_target(r: Option<&RouteEntry>) -> Option<TargetId> {
        r.map(|r| r.targets[0].target)
    }

    #[test]
    fn longest_prefix_wins_and_missing_default_gives_none() {
        let mut rt = RouteTable::new();
        let acme = TenantId::from("acme");
        rt.insert(acme.clone(), entry("+1", 1));
        rt.insert(acme.clone(), entry("+1555", 2));
        assert_eq!(
            first_target(rt.lookup(&acme, Some("+15551234"))),
            Some(TargetId(2))
        );
        assert_eq!(
            first_target(rt.lookup(&acme, Some("+1212"))),
            Some(TargetId(1))
        );
        assert!(rt.lookup(&acme, Some("+44")).is_none());
        assert!(rt.lookup(&acme, None).is_none());
        rt.insert(acme.clone(), entry("", 0));
        assert_eq!(
            first_target(rt.lookup(&acme, Some("+44"))),
            Some(TargetId(0))
        );
        assert!(rt.lookup(&TenantId::from("other"), Some("+1")).is_none());
    }

    fn route(targets: &[(usize, u16, u16)]) -> RouteEntry {
        let mut r = entry("", 0);
        r.targets = targets
            .iter()
            .map(|&(t, priority, weight)| RouteTarget {
                target: TargetId(t),
                host_port: format!("h{t}"),
                uri: format!("sips:h{t}"),
                transport: Transport::Tls,
                priority,
                weight,
            })
            .collect();
        r
    }

    fn order(c: &[Candidate]) -> Vec<usize> {
        c.iter().map(|c| c.target.0).collect()
    }

    #[test]
    fn priority_first_then_weight_and_unusable_left_out() {
        let r = route(&[(0, 20, 1), (1, 10, 1), (2, 30, 1), (3, 10, 0)]);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let c = order(&r.candidates(&mut rng, |_| true));
            assert_eq!(c.len(), 4);
            assert!(c[..2].contains(&1) && c[..2].contains(&3), "{c:?}");
            assert_eq!(&c[2..], &[0, 2]);
        }
        let c = order(&r.candidates(&mut rng, |t| t != TargetId(1)));
        assert_eq!(c, vec![3, 0, 2]);
        assert!(r.candidates(&mut rng, |_| false).is_empty());
    }

    #[test]
    fn weights_share_first_place_among_equal_priority() {
        // 60/30/10: over 10 000 draws each target comes first in proportion to its weight
        // (RFC 2782 draws from 0..=total, so the zero-draw goes to the first: a hair more).
        let r = route(&[(0, 5, 60), (1, 5, 30), (2, 5, 10)]);
        let mut rng = StdRng::seed_from_u64(42);
        let mut first = [0u32; 3];
        for _ in 0..10_000 {
            first[r.candidates(&mut rng, |_| true)[0].target.0] += 1;
        }
        for (i, expected) in [6000, 3000, 1000].into_iter().enumerate() {
            let got = first[i] as i32;
            assert!(
                (got - expected).abs() < 300,
                "target {i}: {got} firsts, expected about {expected} ({first:?})"
            );
        }
    }
}
