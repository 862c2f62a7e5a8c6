//! The sans-IO part of RFC 3263: which NAPTR services and SRV names a target uses, the
//! RFC 2782 ordering of SRV records, and the bounds on what one target may expand to.
//!
//! Owns: those rules and the caps, as plain functions (randomness passed in). Must not:
//! query anything or keep state.

use rand::Rng;

use crate::{DnsError, Scheme, TargetName, Transport};

/// Most candidates one target expands to. Each candidate a caller tries can cost it a
/// connect timeout (or a transaction timeout, 32 s at T1 = 500 ms); past a handful no call
/// waits long enough to reach them, and a hostile zone must not make a call try hundreds.
pub const MAX_CANDIDATES: usize = 16;

/// Most SRV targets (each an A and an AAAA query) one target resolves. Bounds the queries
/// a huge SRV answer can make us send: 8 × 2, plus at most 4 NAPTR/SRV queries.
pub const MAX_SRV_TARGETS: usize = 8;

/// Most records of one answer (NAPTR, SRV, A or AAAA) that are looked at; the rest are
/// dropped and counted (`sbc_dns_answers_capped_total`). Real trunks publish a few; more
/// than 32 only costs memory in the cache.
pub const MAX_RECORDS_PER_ANSWER: usize = 32;

/// Most addresses taken per host name (A and AAAA each). Trunks publish one or two; more
/// would crowd out the other SRV targets under [`MAX_CANDIDATES`].
pub const MAX_ADDRS_PER_HOST: usize = 4;

/// Longest CNAME chain accepted in one answer. RFC 1034 §3.6.2 wants chains avoided;
/// hosted DNS uses one or two hops. A longer chain (or a loop, which the resolver stops at
/// 8 hops) is refused as [`DnsError::CnameChain`].
pub const MAX_CNAME_CHAIN: usize = 5;

/// A NAPTR record, reduced to what RFC 3263 §4.1 uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub replacement: String,
}

/// An SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Target host without the trailing dot; "." stays "." (service not offered).
    pub target: String,
}

/// The transport a `transport=` parameter asks for under `scheme`, normalised:
/// `sips:` means TLS whatever the parameter says of TCP (RFC 3261 §26.2.2); `sips:` with
/// UDP is refused.
pub fn transport_param(t: &TargetName) -> Result<Option<Transport>, DnsError> {
    match (t.scheme, t.transport) {
        (Scheme::Sips, Some(Transport::Udp)) => Err(DnsError::BadTransport(t.to_string())),
        (Scheme::Sips, Some(_)) => Ok(Some(Transport::Tls)),
        (_, tr) => Ok(tr),
    }
}

/// The transport when the URI names an IP address or a port, or when no SRV exists
/// (RFC 3263 §4.1: TCP (here TLS) for `sips:`, UDP for `sip:`).
pub fn default_transport(scheme: Scheme) -> Transport {
    match scheme {
        Scheme::Sips => Transport::Tls,
        Scheme::Sip => Transport::Udp,
    }
}

/// The transport a NAPTR service field names, if it is one of ours.
fn naptr_transport(services: &str) -> Option<Transport> {
    match services.to_ascii_uppercase().as_str() {
        "SIPS+D2T" => Some(Transport::Tls),
        "SIP+D2T" => Some(Transport::Tcp),
        "SIP+D2U" => Some(Transport::Udp),
        _ => None,
    }
}

/// The NAPTR records a `scheme` target may follow, as (transport, SRV name) in NAPTR order
/// then preference (RFC 3403 §4.1): flag "S" only, services of our transports only, and
/// for `sips:` only SIPS+D2T (RFC 3263 §4.1). Duplicates are dropped.
pub fn select_naptr(records: &[Naptr], scheme: Scheme) -> Vec<(Transport, String)> {
    let mut usable: Vec<&Naptr> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter(|r| !r.replacement.is_empty() && r.replacement != ".")
        .filter(|r| match naptr_transport(&r.services) {
            Some(Transport::Tls) => true,
            Some(_) => scheme == Scheme::Sip,
            None => false,
        })
        .collect();
    usable.sort_by_key(|r| (r.order, r.preference));
    let mut out: Vec<(Transport, String)> = Vec::new();
    for r in usable {
        if let Some(tr) = naptr_transport(&r.services) {
            let item = (tr, r.replacement.to_ascii_lowercase());
            if !out.contains(&item) {
                out.push(item);
            }
        }
    }
    out
}

/// SRV names to ask when there is no usable NAPTR (RFC 3263 §4.1), in our order of
/// preference: `_sips._tcp` (TLS), `_sip._tcp`, `_sip._udp`; only the one of an explicit
/// transport; only `_sips._tcp` for `sips:`.
pub fn srv_names(
    host: &str,
    scheme: Scheme,
    transport: Option<Transport>,
) -> Vec<(Transport, String)> {
    let all: &[Transport] = match (scheme, transport) {
        (Scheme::Sips, _) => &[Transport::Tls],
        (Scheme::Sip, None) => &[Transport::Tls, Transport::Tcp, Transport::Udp],
        (Scheme::Sip, Some(Transport::Tls)) => &[Transport::Tls],
        (Scheme::Sip, Some(Transport::Tcp)) => &[Transport::Tcp],
        (Scheme::Sip, Some(Transport::Udp)) => &[Transport::Udp],
    };
    all.iter()
        .map(|tr| {
            let prefix = match tr {
                Transport::Tls => "_sips._tcp",
                Transport::Tcp => "_sip._tcp",
                Transport::Udp => "_sip._udp",
            };
            (*tr, format!("{prefix}.{host}"))
        })
        .collect()
}

/// SRV records in the order to try them (RFC 2782, "Usage rules"): see [`rfc2782_order`].
/// `rng` is passed in so tests can seed it.
pub fn srv_order<R: Rng + ?Sized>(records: &[Srv], rng: &mut R) -> Vec<Srv> {
    rfc2782_order(records.to_vec(), |r| (r.priority, r.weight), rng)
}

/// Items in the order RFC 2782's "Usage rules" give to SRV records, by `key` = (priority,
/// weight): ascending priority; within one priority, repeatedly pick at random with
/// probability proportional to weight (weight-0 items first in the running sum, so they
/// are picked rarely but can be), removing each pick. A group of one draws nothing. The
/// one implementation for SRV answers and for configured route targets
/// (`sbc_sip::routing`).
pub fn rfc2782_order<T, R: Rng + ?Sized>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> (u16, u16),
    rng: &mut R,
) -> Vec<T> {
    // Stable sorts: equal keys keep their given order.
    items.sort_by_key(|t| key(t).0);
    let mut out = Vec::with_capacity(items.len());
    while let Some(first) = items.first() {
        let priority = key(first).0;
        let end = items
            .iter()
            .position(|t| key(t).0 != priority)
            .unwrap_or(items.len());
        let mut group: Vec<T> = items.drain(..end).collect();
        group.sort_by_key(|t| key(t).1 != 0);
        while group.len() > 1 {
            let total: u32 = group.iter().map(|t| u32::from(key(t).1)).sum();
            let draw = rng.gen_range(0..=total);
            let mut running = 0u32;
            let mut chosen = group.len() - 1;
            for (k, t) in group.iter().enumerate() {
                running += u32::from(key(t).1);
                if running >= draw {
                    chosen = k;
                    break;
                }
            }
            out.push(group.remove(chosen));
        }
        out.extend(group);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5061,
            target: target.into(),
        }
    }

    fn naptr(order: u16, pref: u16, flags: &str, services: &str, repl: &str) -> Naptr {
        Naptr {
            order,
            preference: pref,
            flags: flags.into(),
            services: services.into(),
            replacement: repl.into(),
        }
    }

    #[test]
    fn priority_first_then_weight_proportional() {
        let records = [srv(20, 0, "backup"), srv(10, 80, "a"), srv(10, 20, "b")];
        let mut rng = StdRng::seed_from_u64(7);
        let mut a_first = 0;
        for _ in 0..10_000 {
            let o = srv_order(&records, &mut rng);
            let names: Vec<&str> = o.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(names.len(), 3);
            assert_eq!(names[2], "backup", "higher priority value always last");
            if names[0] == "a" {
                a_first += 1;
            }
        }
        // Weight 80 of 100: "a" first ~80 % of the time (the +1 of 0..=total shifts it
        // by at most 1 %).
        assert!(
            (7_700..=8_300).contains(&a_first),
            "a first {a_first} / 10000"
        );
    }

    #[test]
    fn zero_weights_are_still_all_returned() {
        let records = [srv(1, 0, "x"), srv(1, 0, "y"), srv(1, 5, "z")];
        let mut rng = StdRng::seed_from_u64(1);
        let mut o: Vec<String> = srv_order(&records, &mut rng)
            .into_iter()
            .map(|r| r.target)
            .collect();
        o.sort();
        assert_eq!(o, ["x", "y", "z"]);
    }

    #[test]
    fn naptr_for_sips_keeps_only_sips_d2t_in_order() {
        let recs = [
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.t"),
            naptr(10, 20, "S", "SIPS+D2T", "_sips._tcp.t2"),
            naptr(10, 10, "s", "SIPS+D2T", "_sips._tcp.t1"),
            naptr(5, 10, "U", "SIPS+D2T", "!regexp!"),
            naptr(1, 10, "s", "E2U+sip", "x"),
        ];
        assert_eq!(
            select_naptr(&recs, Scheme::Sips),
            vec![
                (Transport::Tls, "_sips._tcp.t1".to_string()),
                (Transport::Tls, "_sips._tcp.t2".to_string())
            ]
        );
        assert_eq!(select_naptr(&recs, Scheme::Sip).len(), 3);
    }

    #[test]
    fn transports_by_scheme() {
        let t = |scheme, transport| TargetName {
            scheme,
            host: "h".into(),
            port: None,
            transport,
        };
        assert_eq!(
            transport_param(&t(Scheme::Sips, Some(Transport::Tcp))),
            Ok(Some(Transport::Tls))
        );
        assert!(matches!(
            transport_param(&t(Scheme::Sips, Some(Transport::Udp))),
            Err(DnsError::BadTransport(_))
        ));
        assert_eq!(srv_names("h", Scheme::Sips, None).len(), 1);
        assert_eq!(
            srv_names("h", Scheme::Sip, None)
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>(),
            ["_sips._tcp.h", "_sip._tcp.h", "_sip._udp.h"]
        );
    }
}
