//! The resolver: RFC 3263 §4 over hickory-resolver, through the [`Cache`], within the
//! configured deadline.
//!
//! Owns: the hickory resolver (its own cache off, so TTLs and bounds are ours), the cache
//! lock (never held across an await), the deadline, and recording the `sbc_dns_*`
//! metrics. Must not: connect to the candidates.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

use crate::cache::{Cache, Records, Rtype};
use crate::order::{
    self, Naptr, Srv, MAX_ADDRS_PER_HOST, MAX_CANDIDATES, MAX_CNAME_CHAIN, MAX_RECORDS_PER_ANSWER,
    MAX_SRV_TARGETS,
};
use crate::{Candidate, DnsConfig, DnsError, Scheme, TargetName, Transport};

/// Where the cache reads the time. [`Resolver::new`] uses the system clock; tests pass one
/// they can move to expire entries without sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

#[derive(Debug)]
struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What walking the SRV names found.
#[derive(Default)]
struct SrvWalk {
    out: Vec<Candidate>,
    /// Some SRV name had records (so no A/AAAA fallback, §4.2).
    srv_found: bool,
    /// The first failure other than "no such record", reported if nothing was found.
    first_err: Option<DnsError>,
}

/// An RFC 3263 resolver with its cache. Cheap to share behind an `Arc`.
pub struct Resolver {
    inner: TokioResolver,
    cache: Mutex<Cache>,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `config.servers` (or those of /etc/resolv.conf when empty).
    pub fn new(config: &DnsConfig) -> Result<Resolver, DnsError> {
        Resolver::with_clock(config, Arc::new(SystemClock))
    }

    /// As [`Resolver::new`], reading the cache's time from `clock`.
    pub fn with_clock(config: &DnsConfig, clock: Arc<dyn Clock>) -> Result<Resolver, DnsError> {
        let (conf, mut opts) = if config.servers.is_empty() {
            let (conf, opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DnsError::NoServer(format!("/etc/resolv.conf: {e}")))?;
            if conf.name_servers().is_empty() {
                return Err(DnsError::NoServer("/etc/resolv.conf names none".into()));
            }
            (conf, opts)
        } else {
            let servers = config
                .servers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            let mut opts = ResolverOpts::default();
            // The configured servers answer for everything: /etc/hosts is not consulted.
            opts.use_hosts_file = ResolveHosts::Never;
            (ResolverConfig::from_name_servers(servers), opts)
        };
        // Our cache holds the answers (clamped, bounded); hickory's would hide TTL expiry.
        opts.cache_size = 0;
        opts.timeout = config.timeout;
        opts.attempts = 1;
        // Keep CNAMEs in answers: their TTLs count, and their number is bounded.
        opts.preserve_intermediates = true;
        let inner =
            hickory_resolver::Resolver::builder_with_config(conf, TokioRuntimeProvider::default())
                .with_options(opts)
                .build()
                .map_err(|e| DnsError::NoServer(e.to_string()))?;
        Ok(Resolver {
            inner,
            cache: Mutex::new(Cache::default()),
            timeout: config.timeout,
            clock,
        })
    }

    /// The deadline of one [`Resolver::candidates`] call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The ordered candidates of `target` (RFC 3263 §4), within the deadline.
    pub async fn candidates(&self, target: &TargetName) -> Result<Vec<Candidate>, DnsError> {
        let mut rng = StdRng::from_entropy();
        self.candidates_with_rng(target, &mut rng).await
    }

    /// As [`Resolver::candidates`], with the randomness of RFC 2782 weighted selection
    /// taken from `rng`.
    pub async fn candidates_with_rng<R: Rng + Send + ?Sized>(
        &self,
        target: &TargetName,
        rng: &mut R,
    ) -> Result<Vec<Candidate>, DnsError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result =
            match tokio::time::timeout_at(deadline, self.resolve(target, rng, deadline)).await {
                Ok(r) => r,
                Err(_) => Err(DnsError::Timeout(self.timeout)),
            };
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!("sbc_dns_lookups_total", "result" => label).increment(1);
        metrics::histogram!("sbc_dns_lookup_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(c) => debug!(target_uri = %target, candidates = c.len(), "resolved"),
            Err(e) => debug!(target_uri = %target, error = %e, "resolution failed"),
        }
        result
    }

    async fn resolve<R: Rng + Send + ?Sized>(
        &self,
        t: &TargetName,
        rng: &mut R,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Candidate>, DnsError> {
        let transport = order::transport_param(t)?;
        let fixed = transport.unwrap_or(order::default_transport(t.scheme));
        // §4.1/§4.2: a numeric IP is used as it is.
        if let Ok(ip) = t.host.parse::<IpAddr>() {
            let port = t.port.unwrap_or(fixed.default_port());
            return Ok(vec![plain(SocketAddr::new(ip, port), fixed)]);
        }
        let host = t.host.trim_end_matches('.').to_ascii_lowercase();
        fqdn(&host)?;
        // §4.2: a port given: A/AAAA only.
        if let Some(port) = t.port {
            let ips = self.addresses(&host, deadline).await?;
            return Ok(ips
                .into_iter()
                .map(|ip| plain(SocketAddr::new(ip, port), fixed))
                .collect());
        }
        let services = self.services(&host, t.scheme, transport, deadline).await?;
        let walk = self.srv_candidates(services, rng, deadline).await;
        if !walk.out.is_empty() {
            return Ok(walk.out);
        }
        if walk.srv_found {
            return Err(walk
                .first_err
                .unwrap_or_else(|| DnsError::NotFound(t.to_string())));
        }
        if let Some(e) = walk.first_err {
            return Err(e);
        }
        // §4.2: no SRV: A/AAAA of the host on the transport's default port.
        let ips = self.addresses(&host, deadline).await?;
        Ok(ips
            .into_iter()
            .map(|ip| plain(SocketAddr::new(ip, fixed.default_port()), fixed))
            .collect())
    }

    /// The SRV names to ask (§4.1): those of the usable NAPTR records when no transport is
    /// given; none usable (or a transport given): the constructed `_sips._tcp` etc.
    async fn services(
        &self,
        host: &str,
        scheme: Scheme,
        transport: Option<Transport>,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<(Transport, String)>, DnsError> {
        if transport.is_some() {
            return Ok(order::srv_names(host, scheme, transport));
        }
        match self.query(host, Rtype::Naptr, deadline).await {
            Ok(Records::Naptr(recs)) => {
                let picked = order::select_naptr(&recs, scheme);
                if picked.is_empty() {
                    Ok(order::srv_names(host, scheme, None))
                } else {
                    Ok(picked)
                }
            }
            Ok(_) | Err(DnsError::NotFound(_)) => Ok(order::srv_names(host, scheme, None)),
            Err(e) => Err(e),
        }
    }

    /// Ask each SRV name in turn and turn its targets, in RFC 2782 order, into candidates,
    /// within [`MAX_SRV_TARGETS`] and [`MAX_CANDIDATES`].
    async fn srv_candidates<R: Rng + Send + ?Sized>(
        &self,
        services: Vec<(Transport, String)>,
        rng: &mut R,
        deadline: tokio::time::Instant,
    ) -> SrvWalk {
        let mut walk = SrvWalk::default();
        let mut srv_targets = 0usize;
        for (tr, name) in services {
            let recs = match self.query(&name, Rtype::Srv, deadline).await {
                Ok(Records::Srv(recs)) => recs,
                Ok(_) | Err(DnsError::NotFound(_)) => continue,
                Err(e) => {
                    walk.first_err.get_or_insert(e);
                    continue;
                }
            };
            walk.srv_found = true;
            for srv in order::srv_order(&recs, rng) {
                if srv.target == "." {
                    continue; // RFC 2782: service decidedly not available there.
                }
                if walk.out.len() >= MAX_CANDIDATES {
                    capped("candidates");
                    return walk;
                }
                if srv_targets == MAX_SRV_TARGETS {
                    capped("srv_targets");
                    return walk;
                }
                srv_targets += 1;
                match self.addresses(&srv.target, deadline).await {
                    Ok(ips) => push_all(&mut walk.out, &ips, &srv, tr),
                    Err(e) => {
                        walk.first_err.get_or_insert(e);
                    }
                }
            }
        }
        walk
    }

    /// A then AAAA addresses of `host` (asked at once); an error only if neither has any.
    async fn addresses(
        &self,
        host: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<IpAddr>, DnsError> {
        let (a, aaaa) = tokio::join!(
            self.query(host, Rtype::A, deadline),
            self.query(host, Rtype::Aaaa, deadline)
        );
        let mut ips = Vec::new();
        for r in [&a, &aaaa] {
            if let Ok(Records::Addrs(v)) = r {
                ips.extend(v.iter().take(MAX_ADDRS_PER_HOST));
            }
        }
        if !ips.is_empty() {
            return Ok(ips);
        }
        match (a, aaaa) {
            (Err(e @ DnsError::Timeout(_)), _) | (_, Err(e @ DnsError::Timeout(_))) => Err(e),
            (Err(e @ DnsError::CnameChain(_)), _) | (_, Err(e @ DnsError::CnameChain(_))) => Err(e),
            (Err(e @ DnsError::ServerFailure(_)), _) | (_, Err(e @ DnsError::ServerFailure(_))) => {
                Err(e)
            }
            _ => Err(DnsError::NotFound(host.to_string())),
        }
    }

    /// One query through the cache.
    async fn query(
        &self,
        name: &str,
        rtype: Rtype,
        deadline: tokio::time::Instant,
    ) -> Result<Records, DnsError> {
        let now = self.clock.now();
        if let Some(hit) = self.lock().get(name, rtype, now) {
            metrics::counter!("sbc_dns_cache_hits_total").increment(1);
            return hit;
        }
        let (answer, ttl) = match tokio::time::timeout_at(deadline, self.ask(name, rtype)).await {
            Ok(r) => r,
            Err(_) => (Err(DnsError::Timeout(self.timeout)), 0),
        };
        self.lock()
            .insert(name, rtype, answer.clone(), ttl, self.clock.now());
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock cannot leave the cache inconsistent (each
        // operation is one map call), so a poisoned lock is used as it is.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask the nameservers; the answer and its TTL (lowest of its records).
    async fn ask(&self, name: &str, rtype: Rtype) -> (Result<Records, DnsError>, u32) {
        let qname = match fqdn(name) {
            Ok(n) => n,
            Err(e) => return (Err(e), 0),
        };
        let record_type = match rtype {
            Rtype::Naptr => RecordType::NAPTR,
            Rtype::Srv => RecordType::SRV,
            Rtype::A => RecordType::A,
            Rtype::Aaaa => RecordType::AAAA,
        };
        let lookup = match self.inner.lookup(qname.clone(), record_type).await {
            Ok(l) => l,
            Err(e) => {
                let e = match map_error(name, &qname, e) {
                    DnsError::Timeout(_) => DnsError::Timeout(self.timeout),
                    other => other,
                };
                return (Err(e), 0);
            }
        };
        let mut ttl = u32::MAX;
        let mut cnames = 0usize;
        let mut naptr = Vec::new();
        let mut srv = Vec::new();
        let mut addrs = Vec::new();
        let mut dropped = false;
        for r in lookup.answers() {
            let full = naptr.len() + srv.len() + addrs.len() >= MAX_RECORDS_PER_ANSWER;
            match &r.data {
                RData::CNAME(_) => cnames += 1,
                _ if full => {
                    dropped = true;
                    continue;
                }
                RData::NAPTR(n) if rtype == Rtype::Naptr => naptr.push(Naptr {
                    order: n.order,
                    preference: n.preference,
                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                    services: String::from_utf8_lossy(&n.services).into_owned(),
                    replacement: host_of(&n.replacement),
                }),
                RData::SRV(s) if rtype == Rtype::Srv => srv.push(Srv {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: host_of(&s.target),
                }),
                RData::A(a) if rtype == Rtype::A => addrs.push(IpAddr::V4(a.0)),
                RData::AAAA(a) if rtype == Rtype::Aaaa => addrs.push(IpAddr::V6(a.0)),
                _ => continue,
            }
            ttl = ttl.min(r.ttl);
        }
        if dropped {
            capped("records");
        }
        if cnames > MAX_CNAME_CHAIN {
            return (Err(DnsError::CnameChain(name.to_string())), 0);
        }
        let records = match rtype {
            Rtype::Naptr if !naptr.is_empty() => Records::Naptr(naptr),
            Rtype::Srv if !srv.is_empty() => Records::Srv(srv),
            Rtype::A | Rtype::Aaaa if !addrs.is_empty() => Records::Addrs(addrs),
            _ => return (Err(DnsError::NotFound(name.to_string())), 0),
        };
        (Ok(records), ttl)
    }
}

/// `name` as an absolute DNS name (no search-list expansion: a route target is a domain).
fn fqdn(name: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_ascii(name).map_err(|_| DnsError::BadName(name.to_string()))?;
    if n.num_labels() == 0 {
        return Err(DnsError::BadName(name.to_string()));
    }
    n.set_fqdn(true);
    Ok(n)
}

/// A name as text without the trailing dot ("." stays ".").
fn host_of(n: &Name) -> String {
    if n.is_root() {
        return ".".into();
    }
    n.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn map_error(name: &str, asked: &Name, e: NetError) -> DnsError {
    match e {
        // The resolver followed CNAMEs and ended on another name with no record, its last
        // answer still a CNAME (NOERROR): a loop or a chain past the resolver's 8 hops.
        NetError::Dns(HDnsError::NoRecordsFound(nr))
            if nr.query.name() != asked && nr.response_code == ResponseCode::NoError =>
        {
            DnsError::CnameChain(name.to_string())
        }
        NetError::Dns(HDnsError::NoRecordsFound(_)) => DnsError::NotFound(name.to_string()),
        NetError::Timeout => DnsError::Timeout(Duration::ZERO),
        NetError::NoConnections => DnsError::NoServer(e.to_string()),
        other => DnsError::ServerFailure(other.to_string()),
    }
}

fn capped(what: &'static str) {
    metrics::counter!("sbc_dns_answers_capped_total", "what" => what).increment(1);
}

fn plain(addr: SocketAddr, transport: Transport) -> Candidate {
    Candidate {
        addr,
        transport,
        priority: 0,
        weight: 0,
        srv_target: None,
    }
}

fn push_all(out: &mut Vec<Candidate>, ips: &[IpAddr], srv: &Srv, transport: Transport) {
    for ip in ips {
        if out.len() >= MAX_CANDIDATES {
            capped("candidates");
            return;
        }
        let addr = SocketAddr::new(*ip, srv.port);
        if out
            .iter()
            .any(|c| c.addr == addr && c.transport == transport)
        {
            continue;
        }
        out.push(Candidate {
            addr,
            transport,
            priority: srv.priority,
            weight: srv.weight,
            srv_target: Some(srv.target.clone()),
        });
    }
}
