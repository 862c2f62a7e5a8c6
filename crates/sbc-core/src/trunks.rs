//! Trunk health as the admin plane sees it: one row per (tenant, route target) with its
//! priority, weight, up/down state, last change, consecutive failed pings and the end of a
//! Retry-After quarantine.
//!
//! Owns: [`TrunkBoard`], the published snapshot the SIP core replaces whole whenever a
//! target's state changes, and its tenant-scoped read. Must not: decide health (the SIP
//! core's `health` module does) or read a clock (the reader computes what remains of a
//! quarantine from its own `now`).

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::tenant::TenantId;

/// One route target of one tenant, as last published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkStatus {
    pub tenant: TenantId,
    /// The target's URI as configured (e.g. `sips:pbx1.example:5061`).
    pub target: String,
    pub priority: u16,
    pub weight: u16,
    /// Up (calls may go there) or down (health checks failed).
    pub up: bool,
    /// Whether OPTIONS health checks run for it (without them it is always up).
    pub checked: bool,
    /// When it last went up or down (`None`: not since the gateway started).
    pub last_change: Option<SystemTime>,
    /// Consecutive failed pings so far.
    pub consecutive_failures: u32,
    /// Skipped by new calls until then (a 503 with Retry-After).
    pub quarantined_until: Option<SystemTime>,
}

/// The latest snapshot, shared between the SIP core (writer) and the admin plane.
#[derive(Debug, Default)]
pub struct TrunkBoard {
    rows: RwLock<Arc<Vec<TrunkStatus>>>,
}

impl TrunkBoard {
    /// A board with no rows.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace every row.
    pub fn publish(&self, rows: Vec<TrunkStatus>) {
        // Replaced whole under the lock, so a poisoned one still holds a whole value.
        *self.rows.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rows);
    }

    /// The rows of `tenant` (all rows for `None`), in publication order.
    pub fn snapshot(&self, tenant: Option<&TenantId>) -> Vec<TrunkStatus> {
        let rows = Arc::clone(&self.rows.read().unwrap_or_else(|e| e.into_inner()));
        rows.iter()
            .filter(|r| tenant.is_none_or(|t| *t == r.tenant))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str, target: &str) -> TrunkStatus {
        TrunkStatus {
            tenant: TenantId::from(tenant),
            target: target.into(),
            priority: 0,
            weight: 1,
            up: true,
            checked: false,
            last_change: None,
            consecutive_failures: 0,
            quarantined_until: None,
        }
    }

    #[test]
    fn snapshot_is_scoped_to_the_tenant() {
        let b = TrunkBoard::new();
        b.publish(vec![row("a", "sips:x:5061"), row("b", "sips:y:5061")]);
        let a = b.snapshot(Some(&TenantId::from("a")));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].target, "sips:x:5061");
        assert_eq!(b.snapshot(None).len(), 2);
        assert!(b.snapshot(Some(&TenantId::from("c"))).is_empty());
    }
}
