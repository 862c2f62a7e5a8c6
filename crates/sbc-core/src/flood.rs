//! Per-source flood guard (what Kamailio's `pike` does), sans-IO.
//!
//! A source that sends more than `max_requests` requests within a window of
//! `window` is blocked for `block_for`: its requests are then dropped or answered 503
//! (per config) without reaching the B2BUA. Sources may also open at most
//! `max_connections` connections at once and start at most `max_handshakes_per_second`
//! TLS handshakes per second. Allowlisted networks are never limited. The table of
//! tracked sources is bounded; idle entries are evicted first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// What to do with a request from a blocked source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodAction {
    /// Drop silently (cheapest; gives an attacker nothing).
    Drop,
    /// Answer 503 with Retry-After (kind to a misconfigured PBX).
    Reply503,
}

/// Flood-guard settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodSettings {
    pub enabled: bool,
    pub window: Duration,
    pub max_requests: u32,
    pub block_for: Duration,
    pub action: FloodAction,
    pub allowlist: Vec<IpNet>,
    pub max_handshakes_per_second: u32,
    pub max_connections: u32,
    /// Bound on the table of tracked sources.
    pub max_tracked_sources: usize,
}

impl Default for FloodSettings {
    fn default() -> Self {
        FloodSettings {
            enabled: true,
            window: Duration::from_secs(2),
            max_requests: 400,
            block_for: Duration::from_secs(60),
            action: FloodAction::Drop,
            allowlist: Vec::new(),
            max_handshakes_per_second: 20,
            max_connections: 64,
            max_tracked_sources: 100_000,
        }
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The source is blocked for `retry_after` more; act as configured.
    Blocked {
        action: FloodAction,
        retry_after: Duration,
        /// True on the request that tripped the block (log it once).
        newly: bool,
    },
}

#[derive(Debug)]
struct Source {
    window_start: Instant,
    requests: u32,
    blocked_until: Option<Instant>,
    handshake_second: Instant,
    handshakes: u32,
    connections: u32,
    last_seen: Instant,
}

impl Source {
    fn new(now: Instant) -> Source {
        Source {
            window_start: now,
            requests: 0,
            blocked_until: None,
            handshake_second: now,
            handshakes: 0,
            connections: 0,
            last_seen: now,
        }
    }
}

#[derive(Debug)]
struct Inner {
    settings: FloodSettings,
    sources: HashMap<IpAddr, Source>,
}

/// The per-source flood guard, shared by every connection.
#[derive(Debug, Clone)]
pub struct FloodGuard {
    inner: Arc<Mutex<Inner>>,
}

/// A connection slot of a source; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    guard: FloodGuard,
    source: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut inner = self.guard.lock();
        if let Some(s) = inner.sources.get_mut(&self.source) {
            s.connections = s.connections.saturating_sub(1);
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    TooManyConnections,
    TooManyHandshakes,
    Blocked,
}

impl ConnectionRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionRefusal::TooManyConnections => "connections_per_source",
            ConnectionRefusal::TooManyHandshakes => "handshakes_per_source",
            ConnectionRefusal::Blocked => "source_blocked",
        }
    }
}

impl FloodGuard {
    pub fn new(settings: FloodSettings) -> FloodGuard {
        FloodGuard {
            inner: Arc::new(Mutex::new(Inner {
                settings,
                sources: HashMap::new(),
            })),
        }
    }

    /// Swap settings (config reload); tracked state is kept.
    pub fn reconfigure(&self, settings: FloodSettings) {
        self.lock().settings = settings;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The table is plain counters, consistent at every step: a poisoned lock is safe
        // to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exempt(settings: &FloodSettings, ip: IpAddr) -> bool {
        !settings.enabled || settings.allowlist.iter().any(|n| n.contains(&ip))
    }

    /// A new TCP connection from `ip` at `now`, before its TLS handshake: counts the
    /// handshake and the connection. The slot must live as long as the connection.
    pub fn connection(
        &self,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Option<ConnectionSlot>, ConnectionRefusal> {
        let mut inner = self.lock();
        if Self::exempt(&inner.settings, ip) {
            return Ok(None);
        }
        let max_conn = inner.settings.max_connections;
        let max_hs = inner.settings.max_handshakes_per_second;
        let s = entry(&mut inner, ip, now);
        if s.blocked_until.is_some_and(|t| now < t) {
            return Err(ConnectionRefusal::Blocked);
        }
        if now.saturating_duration_since(s.handshake_second) >= Duration::from_secs(1) {
            s.handshake_second = now;
            s.handshakes = 0;
        }
        if s.handshakes >= max_hs {
            return Err(ConnectionRefusal::TooManyHandshakes);
        }
        if s.connections >= max_conn {
            return Err(ConnectionRefusal::TooManyConnections);
        }
        s.handshakes += 1;
        s.connections += 1;
        drop(inner);
        Ok(Some(ConnectionSlot {
            guard: self.clone(),
            source: ip,
        }))
    }

    /// One request from `ip` at `now`.
    pub fn request(&self, ip: IpAddr, now: Instant) -> Verdict {
        let mut inner = self.lock();
        if Self::exempt(&inner.settings, ip) {
            return Verdict::Allow;
        }
        let settings = (
            inner.settings.window,
            inner.settings.max_requests,
            inner.settings.block_for,
            inner.settings.action,
        );
        let (window, max, block_for, action) = settings;
        let s = entry(&mut inner, ip, now);
        if let Some(until) = s.blocked_until {
            if now < until {
                return Verdict::Blocked {
                    action,
                    retry_after: until - now,
                    newly: false,
                };
            }
            s.blocked_until = None;
            s.window_start = now;
            s.requests = 0;
        }
        if now.saturating_duration_since(s.window_start) >= window {
            s.window_start = now;
            s.requests = 0;
        }
        s.requests += 1;
        if s.requests > max {
            s.blocked_until = Some(now + block_for);
            return Verdict::Blocked {
                action,
                retry_after: block_for,
                newly: true,
            };
        }
        Verdict::Allow
    }

    /// Sources tracked now (for a gauge).
    pub fn tracked(&self) -> usize {
        self.lock().sources.len()
    }
}

/// The entry for `ip`, evicting idle sources when the table is full.
fn entry(inner: &mut Inner, ip: IpAddr, now: Instant) -> &mut Source {
    if !inner.sources.contains_key(&ip) && inner.sources.len() >= inner.settings.max_tracked_sources
    {
        let window = inner.settings.window;
        // Forget sources that hold no connection, are not blocked and were quiet for a
        // window; if that frees nothing, forget the quietest unconnected one.
        inner.sources.retain(|_, s| {
            s.connections > 0
                || s.blocked_until.is_some_and(|t| now < t)
                || now.saturating_duration_since(s.last_seen) < window
        });
        if inner.sources.len() >= inner.settings.max_tracked_sources {
            if let Some(victim) = inner
                .sources
                .iter()
                .filter(|(_, s)| s.connections == 0)
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(ip, _)| *ip)
            {
                inner.sources.remove(&victim);
            }
        }
    }
    let s = inner.sources.entry(ip).or_insert_with(|| Source::new(now));
    s.last_seen = now;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn blocks_over_rate_then_lets_go() {
        let g = FloodGuard::new(FloodSettings {
            window: Duration::from_secs(1),
            max_requests: 10,
            block_for: Duration::from_secs(30),
            action: FloodAction::Reply503,
            allowlist: vec!["10.0.0.0/8".parse().expect("net")],
            ..FloodSettings::default()
        });
        let t0 = Instant::now();
        let bad = ip("192.0.2.1");
        for _ in 0..10 {
            assert_eq!(g.request(bad, t0), Verdict::Allow);
        }
        assert!(matches!(
            g.request(bad, t0),
            Verdict::Blocked {
                newly: true,
                action: FloodAction::Reply503,
                ..
            }
        ));
        assert!(matches!(
            g.request(bad, t0 + Duration::from_secs(5)),
            Verdict::Blocked { newly: false, .. }
        ));
        // Another source is not affected; an allowlisted one is never limited.
        assert_eq!(g.request(ip("192.0.2.2"), t0), Verdict::Allow);
        for _ in 0..100 {
            assert_eq!(g.request(ip("10.1.2.3"), t0), Verdict::Allow);
        }
        // After the block, the source starts afresh.
        assert_eq!(g.request(bad, t0 + Duration::from_secs(31)), Verdict::Allow);
        // Requests spread over windows never trip it.
        let slow = ip("192.0.2.3");
        for i in 0..100 {
            assert_eq!(
                g.request(slow, t0 + Duration::from_millis(200 * i)),
                Verdict::Allow
            );
        }
    }

    #[test]
    fn connections_and_handshakes_per_source() {
        let g = FloodGuard::new(FloodSettings {
            max_connections: 2,
            max_handshakes_per_second: 3,
            ..FloodSettings::default()
        });
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let c1 = g.connection(a, t0).expect("1");
        let c2 = g.connection(a, t0).expect("2");
        assert_eq!(
            g.connection(a, t0).err(),
            Some(ConnectionRefusal::TooManyConnections)
        );
        drop(c1);
        let _c3 = g.connection(a, t0).expect("slot freed");
        drop(c2);
        assert_eq!(
            g.connection(a, t0).err(),
            Some(ConnectionRefusal::TooManyHandshakes)
        );
        assert!(g.connection(a, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn table_is_bounded() {
        let g = FloodGuard::new(FloodSettings {
            max_tracked_sources: 100,
            ..FloodSettings::default()
        });
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC000_0000 + i));
            g.request(ip, t0 + Duration::from_millis(u64::from(i)));
            assert!(g.tracked() <= 100);
        }
    }
}
