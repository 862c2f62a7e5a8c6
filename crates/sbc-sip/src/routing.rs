//! Tenant route tables: which target trunk an admitted call goes to.
//!
//! Owns: longest-prefix matching of the Request-URI user part against a tenant's routes.
//! Must not: open connections (the transport owns one TLS connector per [`TargetId`]).

use std::collections::HashMap;

use sbc_core::config::Transport;
use sbc_core::tenant::TenantId;

/// Index of a route target in the transport's connector table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetId(pub usize);

/// One route of one tenant.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// Prefix of the Request-URI user part; empty matches everything.
    pub prefix: String,
    /// Connector to use.
    pub target: TargetId,
    /// `host` or `host:port` (IPv6 in brackets) for the outbound Request-URI.
    pub host_port: String,
    /// How the target is reached: Via, Contact and the transaction timers follow it.
    pub transport: Transport,
}

/// All tenants' routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    tenants: HashMap<TenantId, Vec<RouteEntry>>,
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

    /// The transport of a target some route names (`None`: no route names it).
    pub fn transport_of(&self, target: TargetId) -> Option<Transport> {
        self.tenants
            .values()
            .flatten()
            .find(|r| r.target == target)
            .map(|r| r.transport)
    }

    /// The route for a call of `tenant` to `user` (the Request-URI user part, if any).
    pub fn lookup(&self, tenant: &TenantId, user: Option<&str>) -> Option<&RouteEntry> {
        let user = user.unwrap_or("");
        self.tenants
            .get(tenant)?
            .iter()
            .find(|r| user.starts_with(r.prefix.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, t: usize) -> RouteEntry {
        RouteEntry {
            prefix: prefix.into(),
            target: TargetId(t),
            host_port: format!("h{t}"),
            transport: Transport::Tls,
        }
    }

    #[test]
    fn longest_prefix_wins_and_missing_default_gives_none() {
        let mut rt = RouteTable::new();
        let acme = TenantId::from("acme");
        rt.insert(acme.clone(), entry("+1", 1));
        rt.insert(acme.clone(), entry("+1555", 2));
        assert_eq!(
            rt.lookup(&acme, Some("+15551234")).map(|r| r.target),
            Some(TargetId(2))
        );
        assert_eq!(
            rt.lookup(&acme, Some("+1212")).map(|r| r.target),
            Some(TargetId(1))
        );
        assert!(rt.lookup(&acme, Some("+44")).is_none());
        assert!(rt.lookup(&acme, None).is_none());
        rt.insert(acme.clone(), entry("", 0));
        assert_eq!(
            rt.lookup(&acme, Some("+44")).map(|r| r.target),
            Some(TargetId(0))
        );
        assert!(rt.lookup(&TenantId::from("other"), Some("+1")).is_none());
    }
}
