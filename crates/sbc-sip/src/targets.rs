//! Route targets' connectors (TLS, plain TCP, UDP) under stable ids, across reloads.
//!
//! One connector per configured target of every route (a route may list several).
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
//! A target given by domain name is resolved when its connection is opened (RFC 3263, by
//! `sbc-dns`), never here: this module only records what to resolve ([`Dest`]).
//!
//! Must not: open connections (the server does) or decide routing (see [`crate::routing`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use rustls::pki_types::ServerName;
use sbc_core::config::Config;
use sbc_core::tenant::TenantId;
use tokio_rustls::TlsConnector;

use crate::error::SipError;
use crate::routing::{RouteEntry, RouteTable, RouteTarget, TargetId};
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

/// Where a target's connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dest {
    /// A numeric IP in the URI: used as it is (RFC 3263 §4).
    Addr(SocketAddr),
    /// A domain name: resolved by the connection task (NAPTR/SRV without a port, A/AAAA
    /// with one), each candidate tried in order.
    Name(sbc_dns::TargetName),
}

/// A route target's connector.
#[derive(Clone)]
pub(crate) struct Target {
    /// `host:port`, or `host` alone for a name resolved by NAPTR/SRV (IPv6 in brackets):
    /// for logs and the Request-URI.
    pub addr: String,
    pub dest: Dest,
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

/// One configured target of a route with its connector made.
pub(crate) struct PreparedTarget {
    target: Target,
    /// The URI as configured (label of trunk metrics and `/v1/trunks`).
    uri: String,
    priority: u16,
    weight: u16,
}

/// One configured route with its targets' connectors made.
pub(crate) struct PreparedRoute {
    tenant: TenantId,
    prefix: String,
    targets: Vec<PreparedTarget>,
    failover: sbc_core::config::Failover,
    health: Option<sbc_core::config::HealthSettings>,
    /// The tenant's SIPREC recording servers (not a route calls take).
    recording: bool,
}

/// What the resolver looks up for a target given by name: a `sips:` target by its scheme
/// alone (NAPTR picks TLS), a `sip:` one with its transport (SRV `_sip._udp` / `_sip._tcp`,
/// RFC 3263 §4.1: the transport is known, so no NAPTR).
fn dns_name(uri: &sbc_core::config::TargetUri) -> sbc_dns::TargetName {
    let (scheme, transport) = match uri.transport {
        Transport::Tls => (sbc_dns::Scheme::Sips, None),
        t => (sbc_dns::Scheme::Sip, Some(t)),
    };
    sbc_dns::TargetName {
        scheme,
        host: uri.host.clone(),
        port: uri.port_explicit.then_some(uri.port),
        transport,
    }
}

/// How one configured target is reached and trusted.
struct TargetSpec<'a> {
    uri: &'a sbc_core::config::TargetUri,
    server_name: Option<&'a String>,
    ca_pem: Option<&'a Vec<u8>>,
}

/// The connector of one configured target; `named` says whose it is in an error.
fn prepare_target(
    spec: &TargetSpec<'_>,
    named: &dyn Fn(SipError) -> SipError,
) -> Result<Target, SipError> {
    let (host, port, transport) = (&spec.uri.host, spec.uri.port, spec.uri.transport);
    let (addr, dest) = match host.parse::<IpAddr>() {
        Ok(ip) => {
            let sa = SocketAddr::new(ip, port);
            (sa.to_string(), Dest::Addr(sa))
        }
        Err(_) => {
            let explicit = spec.uri.port_explicit.then_some(port);
            let addr = match explicit {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            (addr, Dest::Name(dns_name(spec.uri)))
        }
    };
    // RFC 5922 §4 (and RFC 3263 §4.1's note on TLS): the certificate is checked
    // against the host of the configured URI (or `server_name`), never against a
    // NAPTR replacement or SRV target, which an unsigned DNS answer could forge.
    let server_name = spec.server_name.cloned().unwrap_or_else(|| host.clone());
    let tls = if transport == Transport::Tls {
        let name = tls::server_name(&server_name).map_err(named)?;
        let client = tls::client_config(spec.ca_pem.map(Vec::as_slice)).map_err(named)?;
        Some(TargetTls {
            name,
            connector: TlsConnector::from(client),
        })
    } else {
        None
    };
    Ok(Target {
        addr: addr.clone(),
        dest,
        transport,
        tls,
        key: TargetKey {
            transport,
            addr,
            server_name,
            ca_pem: spec.ca_pem.cloned(),
        },
    })
}

/// Make the connector of every route target in `config`, and of every tenant's SIPREC
/// recording servers (as a route marked [`PreparedRoute::recording`]); fails (naming the
/// route and target) if one cannot be made.
pub(crate) fn prepare(config: &Config) -> Result<Vec<PreparedRoute>, SipError> {
    let mut out = Vec::new();
    for tenant in &config.tenants {
        for route in &tenant.routes {
            let mut targets = Vec::new();
            for t in &route.targets {
                let named = |e: SipError| {
                    SipError::Config(format!(
                        "tenant {} route {:?} -> {}: {e}",
                        tenant.id, route.prefix, t.uri
                    ))
                };
                let spec = TargetSpec {
                    uri: &t.uri,
                    server_name: route.server_name.as_ref(),
                    ca_pem: route.ca_pem.as_ref(),
                };
                targets.push(PreparedTarget {
                    target: prepare_target(&spec, &named)?,
                    uri: t.uri.to_string(),
                    priority: t.priority,
                    weight: t.weight,
                });
            }
            out.push(PreparedRoute {
                tenant: tenant.id.clone(),
                prefix: route.prefix.clone(),
                targets,
                failover: route.failover.clone(),
                health: route.health,
                recording: false,
            });
        }
        if let Some(rec) = &tenant.recording {
            out.push(prepare_recorders(&tenant.id, rec)?);
        }
    }
    Ok(out)
}

/// A tenant's SRS targets, in failover order, as a route marked `recording`.
fn prepare_recorders(
    tenant: &TenantId,
    rec: &sbc_core::config::RecordingSettings,
) -> Result<PreparedRoute, SipError> {
    let mut targets = Vec::new();
    for (i, uri) in rec.srs.iter().enumerate() {
        let named =
            |e: SipError| SipError::Config(format!("tenant {tenant} recording srs {uri}: {e}"));
        let spec = TargetSpec {
            uri,
            server_name: rec.server_name.as_ref(),
            ca_pem: rec.ca_pem.as_ref(),
        };
        targets.push(PreparedTarget {
            target: prepare_target(&spec, &named)?,
            uri: uri.to_string(),
            priority: i as u16,
            weight: 1,
        });
    }
    Ok(PreparedRoute {
        tenant: tenant.clone(),
        prefix: String::new(),
        targets,
        failover: Default::default(),
        health: None,
        recording: true,
    })
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

/// Addresses kept per target given by name, as its connections were opened to them (the
/// resolved candidates actually used): a few SRV/A records rotate over time; the oldest
/// goes first beyond this.
const LEARNED_PER_TARGET: usize = 8;

/// The connectors by id.
#[derive(Default)]
pub(crate) struct TargetTable {
    by_id: HashMap<TargetId, Target>,
    next: usize,
    /// Addresses our connections to each target were opened to (as resolved for sending).
    learned: HashMap<TargetId, Vec<IpAddr>>,
}

impl TargetTable {
    pub fn get(&self, id: TargetId) -> Option<&Target> {
        self.by_id.get(&id)
    }

    /// Record that a connection to `id` was opened to `ip` (a name's resolved address).
    pub fn learn_address(&mut self, id: TargetId, ip: IpAddr) {
        if !self.by_id.contains_key(&id) {
            return;
        }
        let known = self.learned.entry(id).or_default();
        if known.contains(&ip) {
            return;
        }
        if known.len() >= LEARNED_PER_TARGET {
            known.remove(0);
        }
        known.push(ip);
    }

    /// The targets whose address is `ip`: a numeric IP in the URI, or an address one of
    /// our connections to it was opened to. Sorted; empty when none (the source is then
    /// no trunk).
    pub fn targets_at(&self, ip: IpAddr) -> Vec<TargetId> {
        let mut ids: Vec<TargetId> = self
            .by_id
            .iter()
            .filter(|(id, t)| {
                matches!(t.dest, Dest::Addr(sa) if sa.ip() == ip)
                    || self.learned.get(id).is_some_and(|l| l.contains(&ip))
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_by_key(|id| id.0);
        ids
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
            let mut targets = Vec::new();
            for t in route.targets {
                let existing = self
                    .by_id
                    .iter()
                    .find(|(_, known)| known.key == t.target.key)
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
                        self.by_id.insert(id, t.target.clone());
                        named.insert(id);
                        done.added += 1;
                        id
                    }
                };
                targets.push(RouteTarget {
                    target: id,
                    transport: t.target.transport,
                    host_port: t.target.addr,
                    uri: t.uri,
                    priority: t.priority,
                    weight: t.weight,
                });
            }
            if route.recording {
                table.set_recorders(route.tenant, targets);
                continue;
            }
            table.insert(
                route.tenant,
                RouteEntry {
                    prefix: route.prefix,
                    targets,
                    failover: route.failover,
                    health: route.health,
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
            self.learned.remove(id);
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
            targets: vec![PreparedTarget {
                target: Target {
                    addr: addr.into(),
                    dest: Dest::Addr("192.0.2.1:5061".parse().expect("addr")),
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
                uri: format!("sips:{addr}"),
                priority: 0,
                weight: 1,
            }],
            failover: Default::default(),
            health: None,
            recording: false,
        }
    }

    fn target_of(table: &RouteTable, tenant: &str, user: &str) -> TargetId {
        table
            .lookup(&TenantId::from(tenant), Some(user))
            .expect("a route")
            .targets[0]
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

    #[test]
    fn a_source_address_names_the_targets_sent_to_it_literal_or_learned_and_forgotten_on_retire() {
        let mut t = TargetTable::default();
        let mut named = route("b", "", "trunk.example:5061");
        named.targets[0].target.dest = Dest::Name(sbc_dns::TargetName {
            scheme: sbc_dns::Scheme::Sips,
            host: "trunk.example".into(),
            port: Some(5061),
            transport: None,
        });
        let (table, _) = t.install(vec![route("a", "", "pbx1:5061"), named], &HashSet::new());
        let (a, b) = (target_of(&table, "a", "1"), target_of(&table, "b", "1"));
        let literal: IpAddr = "192.0.2.1".parse().expect("ip");
        let resolved: IpAddr = "198.51.100.7".parse().expect("ip");
        assert_eq!(t.targets_at(literal), vec![a], "a numeric target by its IP");
        assert!(
            t.targets_at(resolved).is_empty(),
            "a name is known by the addresses it was reached at"
        );
        t.learn_address(b, resolved);
        assert_eq!(t.targets_at(resolved), vec![b]);
        for i in 0..LEARNED_PER_TARGET {
            t.learn_address(b, IpAddr::from([203, 0, 113, i as u8]));
        }
        assert!(
            t.targets_at(resolved).is_empty(),
            "bounded: the oldest address goes first"
        );
        t.learn_address(TargetId(99), resolved);
        assert!(
            t.targets_at(resolved).is_empty(),
            "no unknown target learns"
        );
        let (_, done) = t.install(vec![route("a", "", "pbx1:5061")], &HashSet::new());
        assert_eq!(done.retired, vec![b]);
        assert!(t.targets_at(IpAddr::from([203, 0, 113, 1])).is_empty());
        assert!(t.learned.is_empty(), "retired with its target");
    }

    #[test]
    fn recording_servers_get_connectors_but_no_route() {
        let mut cfg = Config::embedded_default().expect("default config");
        cfg.tenants.truncate(1);
        let srs = ["sips:127.0.0.1:5091", "sip:127.0.0.1:5092;transport=tcp"];
        cfg.tenants[0].recording = Some(sbc_core::config::RecordingSettings {
            srs: srs
                .iter()
                .map(|u| sbc_core::config::parse_target(u).expect("target"))
                .collect(),
            mode: sbc_core::config::RecordingMode::Always,
            legs: sbc_core::tap::TapLegs::Both,
            transport: sbc_core::tap::TapTransport::Rtp,
            on_failure: sbc_core::config::OnFailure::Continue,
            answer_timeout: std::time::Duration::from_secs(4),
            identities: sbc_core::config::Identities::Clear,
            server_name: None,
            ca_pem: None,
            ca_path: None,
        });
        let mut table = TargetTable::default();
        let (routes, _) = table.install(prepare(&cfg).expect("prepare"), &HashSet::new());
        let tenant = &cfg.tenants[0].id;
        let rec = routes.recorders(tenant);
        let uris: Vec<&str> = rec.iter().map(|r| r.uri.as_str()).collect();
        assert_eq!(uris, srs);
        assert_eq!(routes.transport_of(rec[1].target), Some(Transport::Tcp));
        assert!(table.get(rec[0].target).is_some_and(|t| t.tls.is_some()));
        // The recorders are no route: the tenant's route still leads to its trunk.
        let route = routes.lookup(tenant, Some("123")).expect("route");
        assert!(route.targets.iter().all(|t| !srs.contains(&t.uri.as_str())));
    }

    #[test]
    fn names_are_resolved_later_and_ips_are_used_as_they_are() {
        let mut cfg = Config::embedded_default().expect("default config");
        let route = |prefix: &str, uri: &str| sbc_core::config::Route {
            prefix: prefix.into(),
            targets: vec![sbc_core::config::RouteTarget {
                uri: sbc_core::config::parse_target(uri).expect("target"),
                priority: 0,
                weight: 1,
            }],
            server_name: None,
            ca_pem: None,
            ca_path: None,
            failover: Default::default(),
            health: None,
        };
        cfg.tenants.truncate(1);
        cfg.tenants[0].routes = vec![
            route("1", "sips:trunk.example"),
            route("2", "sips:trunk.example:5070"),
            route("3", "sips:[2001:db8::1]"),
        ];
        let routes = prepare(&cfg).expect("prepare");
        let by_prefix = |p: &str| {
            routes.iter().find(|r| r.prefix == p).map(|r| {
                (
                    r.targets[0].target.addr.clone(),
                    r.targets[0].target.dest.clone(),
                )
            })
        };
        let name = |port| {
            Dest::Name(sbc_dns::TargetName {
                scheme: sbc_dns::Scheme::Sips,
                host: "trunk.example".into(),
                port,
                transport: None,
            })
        };
        assert_eq!(by_prefix("1"), Some(("trunk.example".into(), name(None))));
        assert_eq!(
            by_prefix("2"),
            Some(("trunk.example:5070".into(), name(Some(5070))))
        );
        let v6: SocketAddr = "[2001:db8::1]:5061".parse().expect("addr");
        assert_eq!(by_prefix("3"), Some((v6.to_string(), Dest::Addr(v6))));
    }
}
