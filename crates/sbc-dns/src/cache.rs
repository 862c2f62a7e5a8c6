//! The answer cache: one entry per (name, record type), kept for the answer's TTL within
//! clamps, negative answers and server failures for a short time. Sans-IO: `now` is passed
//! in.
//!
//! Owns: entries, their expiry and the bound on their number. Must not: query anything.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::order::{Naptr, Srv};
use crate::DnsError;

/// Most entries held. One DNS-named target costs at most ~20 entries (NAPTR, three SRV,
/// A and AAAA of 8 SRV targets); 4096 covers some 200 such targets at a few hundred bytes
/// an entry (~1 MB). When full, expired entries go first, then the one expiring soonest.
pub const MAX_ENTRIES: usize = 4096;

/// Shortest time a positive answer is kept, whatever its TTL. A TTL of 0 or 1 s (a
/// misconfigured or hostile zone) would turn every call into fresh queries; 5 s bounds
/// that to one lookup per name per 5 s while still following a change quickly.
pub const MIN_TTL: Duration = Duration::from_secs(5);

/// Longest time a positive answer is kept, whatever its TTL: a trunk moved by DNS is
/// followed within an hour even if its zone says a day or more (RFC 2181 §8 allows TTLs up
/// to 68 years).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// How long "no such name / no such record" is kept (RFC 2308 negative caching). Short,
/// so a record an operator has just published is used within 30 s; long enough that a
/// target without NAPTR or AAAA does not cost a query per call.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// How long a server failure or timeout is kept (RFC 2308 §7.1 allows up to 5 minutes).
/// 5 s: a dead resolver then costs one call in 5 s the full deadline, not every call,
/// and recovery is seen within 5 s.
pub const FAILURE_TTL: Duration = Duration::from_secs(5);

/// Record types the resolver asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rtype {
    Naptr,
    Srv,
    A,
    Aaaa,
}

/// Records of one answer, reduced to what resolution uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    Naptr(Vec<Naptr>),
    Srv(Vec<Srv>),
    Addrs(Vec<IpAddr>),
}

#[derive(Debug)]
struct Entry {
    answer: Result<Records, DnsError>,
    expires: Instant,
}

/// The cache.
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<(String, Rtype), Entry>,
}

impl Cache {
    /// The answer cached for `name`/`rtype`, if still fresh at `now`.
    pub fn get(&self, name: &str, rtype: Rtype, now: Instant) -> Option<Result<Records, DnsError>> {
        let e = self.entries.get(&(name.to_ascii_lowercase(), rtype))?;
        (now < e.expires).then(|| e.answer.clone())
    }

    /// Keep `answer` for `name`/`rtype`. `ttl` is the answer's TTL in seconds (the lowest
    /// of its records, CNAMEs included), clamped to [`MIN_TTL`]..=[`MAX_TTL`]; a
    /// `NotFound` is kept for [`NEGATIVE_TTL`], other failures for [`FAILURE_TTL`].
    pub fn insert(
        &mut self,
        name: &str,
        rtype: Rtype,
        answer: Result<Records, DnsError>,
        ttl: u32,
        now: Instant,
    ) {
        let keep = match &answer {
            Ok(_) => Duration::from_secs(u64::from(ttl)).clamp(MIN_TTL, MAX_TTL),
            Err(DnsError::NotFound(_)) => NEGATIVE_TTL,
            Err(_) => FAILURE_TTL,
        };
        let key = (name.to_ascii_lowercase(), rtype);
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= MAX_ENTRIES {
                if let Some(k) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                answer,
                expires: now + keep,
            },
        );
    }

    /// Entries held (fresh or not yet evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(ip: &str) -> Result<Records, DnsError> {
        Ok(Records::Addrs(vec![ip.parse().expect("ip")]))
    }

    #[test]
    fn ttl_is_clamped_and_case_ignored() {
        let t0 = Instant::now();
        let mut c = Cache::default();
        c.insert("Pbx.Example", Rtype::A, addrs("192.0.2.1"), 0, t0);
        assert!(c
            .get(
                "pbx.example",
                Rtype::A,
                t0 + MIN_TTL - Duration::from_millis(1)
            )
            .is_some());
        assert!(c.get("pbx.example", Rtype::A, t0 + MIN_TTL).is_none());
        c.insert("long", Rtype::A, addrs("192.0.2.2"), u32::MAX, t0);
        assert!(c.get("long", Rtype::A, t0 + MAX_TTL).is_none());
        assert!(c.get("long", Rtype::Aaaa, t0).is_none(), "per record type");
    }

    #[test]
    fn negative_and_failure_lifetimes() {
        let t0 = Instant::now();
        let mut c = Cache::default();
        c.insert(
            "n",
            Rtype::Srv,
            Err(DnsError::NotFound("n".into())),
            9999,
            t0,
        );
        c.insert(
            "f",
            Rtype::Srv,
            Err(DnsError::ServerFailure("x".into())),
            9999,
            t0,
        );
        assert!(c
            .get("n", Rtype::Srv, t0 + NEGATIVE_TTL - Duration::from_secs(1))
            .is_some());
        assert!(c.get("n", Rtype::Srv, t0 + NEGATIVE_TTL).is_none());
        assert!(c.get("f", Rtype::Srv, t0 + FAILURE_TTL).is_none());
    }

    #[test]
    fn bounded_evicting_expired_then_soonest() {
        let t0 = Instant::now();
        let mut c = Cache::default();
        for i in 0..MAX_ENTRIES {
            c.insert(
                &format!("h{i}"),
                Rtype::A,
                addrs("192.0.2.1"),
                60 + i as u32,
                t0,
            );
        }
        c.insert("new", Rtype::A, addrs("192.0.2.9"), 60, t0);
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(
            c.get("h0", Rtype::A, t0).is_none(),
            "soonest-expiring evicted"
        );
        assert!(c.get("new", Rtype::A, t0).is_some());
        // Later, everything has expired: one insert sweeps them all.
        c.insert("later", Rtype::A, addrs("192.0.2.9"), 60, t0 + MAX_TTL);
        assert_eq!(c.len(), 1);
    }
}
