//! Route targets' connectors (TLS, plain TCP, UDP) under stable ids, across reloads.
//!
//! Owns: making a connector per configured route (before anything is swapped, so a reload
//! whose routes cannot be served changes nothing), and the table from [`TargetId`] to
//! connector that the transport sends through. A target whose address, TLS name and CA are
//! unchanged keeps its id, so its pooled connection is reused; a changed or new one gets a
//! fresh id, so new calls open a fresh connection while running calls keep the id (and the
//! connector and connection) they were routed with. An id that no route names and no call
//! uses is retired at the next reload, so the table is bounded by the routes plus the
//! targets of calls still running.
//!
//! Must not: open connections (the server does) or decide routing (see [`crate::routing`]).

use std::collections::{HashMap, HashSet};

use rustls::pki_types::ServerName;
use sbc_core::config::Config;
use sbc_core::tenant::TenantId;
use tokio_rustls::TlsConnector;

use crate::error::SipError;
use crate::routing::{RouteEntry, RouteTable, TargetId};
use crate::tls;
use crate::transport::Transport;

/// What makes two targets the same: where, which name is verified, which CA is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetKey {
    transport: Transport,
    addr: String,
    server_name: String,
    ca_pem: Option<Vec<u8>>,
}

/// A route target's connector.
#[derive(Clone)]
pub(crate) struct Target {
    /// `host:port` (IPv6 in brackets) to connect to.
    pub addr: String,
    /// How it is reached (a UDP target's large requests go over TCP to `addr`).
    pub transport: Transport,
    /// TLS targets: the name verified in its certificate and the connector.
    pub tls: Option<TargetTls>,
    key: TargetKey,
}

/// The TLS side of a `sips:` target.
#[derive(Clone)]
pub(crate) struct TargetTls {
    /// The name verified in its certificate.
    pub name: ServerName<'static>,
    pub connector: TlsConnector,
}

/// One configured route with its connector made.
pub(crate) struct PreparedRoute {
    tenant: TenantId,
    prefix: String,
    target: Target,
}

/// Make the connector of every route in `config`; fails (naming the route) if one cannot
/// be made.
pub(crate) fn prepare(config: &Config) -> Result<Vec<PreparedRoute>, SipError> {
    let mut out = Vec::new();
    for tenant in &config.tenants {
        for route in &tenant.routes {
            let host = &route.target.host;
            let transport = route.target.transport;
            let addr = route.target.host_port();
            let server_name = route.server_name.clone().unwrap_or_else(|| host.clone());
            let named = |e: SipError| {
                SipError::Config(format!(
                    "tenant {} route {:?} -> {}: {e}",
                    tenant.id, route.prefix, route.target
                ))
            };
            let tls = if transport == Transport::Tls {
                let name = tls::server_name(&server_name).map_err(named)?;
                let client = tls::client_config(route.ca_pem.as_deref()).map_err(named)?;
                Some(TargetTls {
                    name,
                    connector: TlsConnector::from(client),
                })
            } else {
                None
            };
            out.push(PreparedRoute {
                tenant: tenant.id.clone(),
                prefix: route.prefix.clone(),
                target: Target {
                    addr: addr.clone(),
                    transport,
                    tls,
                    key: TargetKey {
                        transport,
                        addr,
                        server_name,
                        ca_pem: route.ca_pem.clone(),
                    },
                },
            });
        }
    }
    Ok(out)
}

/// What an [`TargetTable::install`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Installed {
    /// Targets unchanged, kept with their id and pooled connection.
    pub kept: usize,
    /// Targets new or changed, under fresh ids.
    pub added: usize,
    /// Ids no route names and no call uses any more: their pooled connections can go.
    pub retired: Vec<TargetId>,
}

/// The connectors by id.
#[derive(Default)]
pub(crate) struct TargetTable {
    by_id: HashMap<TargetId, Target>,
    next: usize,
}

impl TargetTable {
    pub fn get(&self, id: TargetId) -> Option<&Target> {
        self.by_id.get(&id)
    }

    /// Number of connectors held (configured and retained for running calls).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Take `routes` as the configured ones: the route table for new calls, with ids
    /// reused for unchanged targets. Targets in `in_use` stay reachable by their id.
    pub fn install(
        &mut self,
        routes: Vec<PreparedRoute>,
        in_use: &HashSet<TargetId>,
    ) -> (RouteTable, Installed) {
        let mut table = RouteTable::new();
        let mut named = HashSet::new();
        let mut done = Installed::default();
        for route in routes {
            let existing = self
                .by_id
                .iter()
                .find(|(_, t)| t.key == route.target.key)
                .map(|(id, _)| *id);
            let id = match existing {
                Some(id) => {
                    if named.insert(id) {
                        done.kept += 1;
                    }
                    id
                }
                None => {
                    let id = TargetId(self.next);
                    self.next += 1;
                    self.by_id.insert(id, route.target.clone());
                    named.insert(id);
                    done.added += 1;
                    id
                }
            };
            table.insert(
                route.tenant,
                RouteEntry {
                    prefix: route.prefix,
                    target: id,
                    host_port: route.target.addr,
                    transport: route.target.transport,
                },
            );
        }
        let mut retired: Vec<TargetId> = self
            .by_id
            .keys()
            .filter(|id| !named.contains(id) && !in_use.contains(id))
            .copied()
            .collect();
        retired.sort_by_key(|id| id.0);
        for id in &retired {
            self.by_id.remove(id);
        }
        done.retired = retired;
        (table, done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(tenant: &str, prefix: &str, addr: &str) -> PreparedRoute {
        let client = tls::client_config(None).expect("web PKI roots");
        PreparedRoute {
            tenant: TenantId::from(tenant),
            prefix: prefix.into(),
            target: Target {
                addr: addr.into(),
                transport: Transport::Tls,
                tls: Some(TargetTls {
                    name: tls::server_name("pbx.example").expect("name"),
                    connector: TlsConnector::from(client),
                }),
                key: TargetKey {
                    transport: Transport::Tls,
                    addr: addr.into(),
                    server_name: "pbx.example".into(),
                    ca_pem: None,
                },
            },
        }
    }

    fn target_of(table: &RouteTable, tenant: &str, user: &str) -> TargetId {
        table
            .lookup(&TenantId::from(tenant), Some(user))
            .expect("a route")
            .target
    }

    #[test]
    fn unchanged_targets_keep_their_id_and_changed_ones_get_a_new_one() {
        let mut t = TargetTable::default();
        let (table, done) = t.install(
            vec![route("a", "", "pbx1:5061"), route("b", "", "pbx2:5061")],
            &HashSet::new(),
        );
        assert_eq!((done.kept, done.added), (0, 2));
        let (a1, b1) = (target_of(&table, "a", "1"), target_of(&table, "b", "1"));
        assert_ne!(a1, b1);

        // a moves to pbx3; b unchanged; a call of a is still running on a's old target.
        let in_use = HashSet::from([a1]);
        let (table, done) = t.install(
            vec![route("a", "", "pbx3:5061"), route("b", "", "pbx2:5061")],
            &in_use,
        );
        let (a2, b2) = (target_of(&table, "a", "1"), target_of(&table, "b", "1"));
        assert_eq!(
            b2, b1,
            "unchanged target keeps its id (and pooled connection)"
        );
        assert_ne!(
            a2, a1,
            "changed target gets a fresh id: no reuse of the old pool"
        );
        assert_eq!(
            done,
            Installed {
                kept: 1,
                added: 1,
                retired: vec![]
            }
        );
        assert_eq!(
            t.get(a1).map(|x| x.addr.as_str()),
            Some("pbx1:5061"),
            "the running call's connector stays"
        );
        assert_eq!(t.get(a2).map(|x| x.addr.as_str()), Some("pbx3:5061"));

        // The call ended: at the next reload the old target is retired.
        let (_, done) = t.install(
            vec![route("a", "", "pbx3:5061"), route("b", "", "pbx2:5061")],
            &HashSet::new(),
        );
        assert_eq!(done.retired, vec![a1]);
        assert!(t.get(a1).is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn two_routes_to_one_target_share_it() {
        let mut t = TargetTable::default();
        let (table, done) = t.install(
            vec![route("a", "+1", "pbx:5061"), route("a", "+44", "pbx:5061")],
            &HashSet::new(),
        );
        assert_eq!(done.added, 1);
        assert_eq!(
            target_of(&table, "a", "+1555"),
            target_of(&table, "a", "+4420")
        );
    }
}
