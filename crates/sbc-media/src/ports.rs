//! The media port pool: even RTP ports with RTCP on the next one (RFC 3550 §11), one pair
//! per leg per m-line. A leg that negotiates rtcp-mux (RFC 5761) still holds its pair,
//! so an answer that refuses mux needs no second allocation.
//!
//! Owns: which pairs are free ([`PortPool`], sans-IO) and the binding of a pair to two UDP
//! sockets ([`bind_pair`], with `IP_FREEBIND` on request: [`bind_udp`]) with a lease that
//! gives the pair back when dropped. Freed
//! pairs go to the back of the queue so a port is not reused at once, which keeps late
//! packets of an ended call away from a new one. Must not: run on the packet path
//! (allocation takes a lock shared by the control side and the workers).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};

/// How many pairs [`bind_pair`] tries before it gives up when ports are taken by other
/// processes: enough to step over a few strays, bounded so an exhausted host fails fast.
pub const BIND_ATTEMPTS: usize = 16;

/// Why a port range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortRangeError {
    #[error("port range must start on an even port, got {0}")]
    OddStart(u16),
    #[error("port range {min}..={max} holds no RTP/RTCP pair")]
    Empty { min: u16, max: u16 },
    #[error("port range must not include port 0")]
    ZeroPort,
}

/// Free and used RTP/RTCP pairs of a range.
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    free: VecDeque<u16>,
    used: Vec<bool>,
    in_use: usize,
}

impl PortPool {
    /// A pool over `min..=max`; `min` must be even. Pairs are `(p, p + 1)` for even `p`
    /// with `p + 1 <= max`.
    pub fn new(min: u16, max: u16) -> Result<Self, PortRangeError> {
        if min == 0 {
            return Err(PortRangeError::ZeroPort);
        }
        if min % 2 != 0 {
            return Err(PortRangeError::OddStart(min));
        }
        if max <= min {
            return Err(PortRangeError::Empty { min, max });
        }
        let pairs = (u32::from(max) - u32::from(min)).div_ceil(2);
        // `pairs` <= 32768 since both bounds are u16.
        let pairs = pairs as u16;
        Ok(PortPool {
            min,
            free: (0..pairs).collect(),
            used: vec![false; usize::from(pairs)],
            in_use: 0,
        })
    }

    /// Takes a pair; returns its even RTP port, or `None` when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<u16> {
        let idx = self.free.pop_front()?;
        self.used[usize::from(idx)] = true;
        self.in_use += 1;
        Some(self.min + 2 * idx)
    }

    /// Gives a pair back; false (and nothing changes) for a port that is not an allocated
    /// RTP port of this pool.
    pub fn release(&mut self, rtp_port: u16) -> bool {
        if rtp_port < self.min || (rtp_port - self.min) % 2 != 0 {
            return false;
        }
        let idx = (rtp_port - self.min) / 2;
        match self.used.get_mut(usize::from(idx)) {
            Some(u) if *u => {
                *u = false;
                self.in_use -= 1;
                self.free.push_back(idx);
                true
            }
            _ => false,
        }
    }

    /// Takes the pair of `rtp_port` if it is a free pair of this pool (a restored call's
    /// stored ports, hot standby); false when it is taken or not of this pool.
    pub fn take(&mut self, rtp_port: u16) -> bool {
        if rtp_port < self.min || (rtp_port - self.min) % 2 != 0 {
            return false;
        }
        let idx = (rtp_port - self.min) / 2;
        match self.used.get_mut(usize::from(idx)) {
            Some(u) if !*u => {
                *u = true;
                self.in_use += 1;
                self.free.retain(|i| *i != idx);
                true
            }
            _ => false,
        }
    }

    /// Whether `rtp_port` is a pair of this pool's range.
    pub fn covers(&self, rtp_port: u16) -> bool {
        rtp_port >= self.min
            && (rtp_port - self.min) % 2 == 0
            && usize::from((rtp_port - self.min) / 2) < self.used.len()
    }

    /// Pairs in use.
    pub fn pairs_in_use(&self) -> usize {
        self.in_use
    }

    /// Ports in use (two per pair).
    pub fn ports_in_use(&self) -> usize {
        2 * self.in_use
    }

    /// Total pairs.
    pub fn capacity(&self) -> usize {
        self.used.len()
    }
}

/// A pool shared by the control side and the workers (locked per call, not per packet).
pub type SharedPortPool = Arc<Mutex<PortPool>>;

/// Locks the pool; a poisoned lock still holds consistent data (every mutation is a few
/// infallible steps), so it is used as is.
pub fn lock(pool: &SharedPortPool) -> MutexGuard<'_, PortPool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pair taken from the pool, given back on drop; a restored call's pair outside the
/// pool's range or address ([`bind_stored`]) has no pool.
#[derive(Debug)]
pub struct PortLease {
    pool: Option<SharedPortPool>,
    port: u16,
}

impl PortLease {
    /// The even RTP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            lock(pool).release(self.port);
        }
    }
}

/// Two non-blocking UDP sockets on a leased pair. Field order matters: the sockets close
/// before the lease returns the ports.
#[derive(Debug)]
pub struct BoundPair {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub lease: PortLease,
}

impl BoundPair {
    /// The even RTP port.
    pub fn port(&self) -> u16 {
        self.lease.port
    }
}

/// Where Linux keeps the range it picks ephemeral ports from (`bind` to port 0, `connect`
/// without `bind`).
pub const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The part of the media range `min..=max` that the kernel also hands out as ephemeral
/// ports, given the text of [`EPHEMERAL_RANGE_FILE`] (`"32768\t60999"`); `None` when they
/// do not overlap or the text is not two port numbers. Any program on the host (an
/// outbound connection, a resolver, a tap's socket) may then hold ports of the media range,
/// and after [`BIND_ATTEMPTS`] taken pairs in a row a call is refused: a load test with
/// many sockets on the host refused 125 of 4,500 calls that way (`benches/sbc_compare`,
/// issue #18).
pub fn ephemeral_overlap(kernel_range: &str, min: u16, max: u16) -> Option<(u16, u16)> {
    let mut parts = kernel_range.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi)), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let (from, to) = (lo.max(min), hi.min(max));
    (from <= to).then_some((from, to))
}

/// Logs a warning when the media range overlaps the host's ephemeral port range (see
/// [`ephemeral_overlap`]); silent when the file cannot be read (not Linux).
pub fn warn_if_ephemeral(min: u16, max: u16) {
    let Ok(text) = std::fs::read_to_string(EPHEMERAL_RANGE_FILE) else {
        return;
    };
    if let Some((from, to)) = ephemeral_overlap(&text, min, max) {
        tracing::warn!(
            media_port_min = min,
            media_port_max = max,
            overlap_from = from,
            overlap_to = to,
            kernel_range = text.trim(),
            "media port range overlaps the kernel's ephemeral port range ({EPHEMERAL_RANGE_FILE}): \
             other sockets on this host can take media ports and calls may be refused with \
             \"no media ports available\"; move [media] port_min/port_max below it or narrow \
             net.ipv4.ip_local_port_range"
        );
    }
}

/// Why no pair could be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("port pool exhausted")]
    Exhausted,
    #[error("no bindable pair after {BIND_ATTEMPTS} attempts")]
    Unbindable,
}

/// One non-blocking UDP socket bound on `addr`; with `freebind`, with `IP_FREEBIND` /
/// `IPV6_FREEBIND` (Linux) so `addr` need not be on this host yet: a cluster node's media
/// on the virtual IP before keepalived gives it the address (issue #16). Packets to it
/// arrive once the address is here.
pub fn bind_udp(addr: SocketAddr, freebind: bool) -> std::io::Result<UdpSocket> {
    if !freebind {
        let s = UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        return Ok(s);
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    set_freebind(&s, addr)?;
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_freebind(s: &socket2::Socket, addr: SocketAddr) -> std::io::Result<()> {
    match addr {
        SocketAddr::V4(_) => s.set_freebind_v4(true),
        SocketAddr::V6(_) => s.set_freebind_v6(true),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_freebind(_: &socket2::Socket, _: SocketAddr) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "IP_FREEBIND exists on Linux only",
    ))
}

/// Binds a restored call's stored pair (hot standby): RTP on `rtp`, RTCP on the next
/// port, with `IP_FREEBIND` (the address may be a virtual IP not held yet). When `pool`
/// serves `rtp`'s address and its range holds the port, the pair is taken from the pool
/// (refused when in use: [`BindError::Unbindable`]); else it is held outside the pool.
pub fn bind_stored(
    pool: &SharedPortPool,
    pool_ip: IpAddr,
    rtp: SocketAddr,
) -> Result<BoundPair, BindError> {
    let port = rtp.port();
    if port == 0 || port % 2 != 0 || port == u16::MAX {
        return Err(BindError::Unbindable);
    }
    // One lock: whether the pool covers the port and, if so, taking it.
    let pooled = rtp.ip() == pool_ip && {
        let mut p = lock(pool);
        if p.covers(port) && !p.take(port) {
            return Err(BindError::Unbindable);
        }
        p.covers(port)
    };
    let lease = PortLease {
        pool: pooled.then(|| Arc::clone(pool)),
        port,
    };
    let ip = rtp.ip();
    let bind = |p: u16| bind_udp(SocketAddr::new(ip, p), true);
    match (bind(port), bind(port + 1)) {
        (Ok(rtp), Ok(rtcp)) => Ok(BoundPair { rtp, rtcp, lease }),
        (a, b) => {
            let e = a.err().or(b.err()).map(|e| e.to_string());
            tracing::warn!(address = %rtp, error = ?e, "stored media ports do not bind");
            Err(BindError::Unbindable)
        }
    }
}

/// Takes a pair from the pool and binds RTP and RTCP sockets on `ip`. Pairs that do not
/// bind (taken by another process) are given back and the next is tried.
pub fn bind_pair(pool: &SharedPortPool, ip: IpAddr) -> Result<BoundPair, BindError> {
    bind_pair_on(pool, ip, false)
}

/// [`bind_pair`], with `IP_FREEBIND` when `freebind` (see [`bind_udp`]).
pub fn bind_pair_on(
    pool: &SharedPortPool,
    ip: IpAddr,
    freebind: bool,
) -> Result<BoundPair, BindError> {
    for _ in 0..BIND_ATTEMPTS {
        let port = lock(pool).allocate().ok_or(BindError::Exhausted)?;
        let lease = PortLease {
            pool: Some(Arc::clone(pool)),
            port,
        };
        let bind = |p: u16| bind_udp(SocketAddr::new(ip, p), freebind);
        match (bind(port), bind(port.wrapping_add(1))) {
            (Ok(rtp), Ok(rtcp)) => return Ok(BoundPair { rtp, rtcp, lease }),
            (rtp, rtcp) => {
                tracing::debug!(
                    port,
                    rtp_ok = rtp.is_ok(),
                    rtcp_ok = rtcp.is_ok(),
                    "media port pair not bindable, trying another"
                );
                drop(lease);
            }
        }
    }
    Err(BindError::Unbindable)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_overlap_is_the_shared_part() {
        let linux = "32768\t60999\n";
        assert_eq!(ephemeral_overlap(linux, 20000, 29999), None);
        assert_eq!(ephemeral_overlap(linux, 40000, 49999), Some((40000, 49999)));
        assert_eq!(ephemeral_overlap(linux, 30000, 40000), Some((32768, 40000)));
        assert_eq!(ephemeral_overlap(linux, 60000, 65535), Some((60000, 60999)));
        assert_eq!(ephemeral_overlap(linux, 32768, 32768), Some((32768, 32768)));
        assert_eq!(ephemeral_overlap("", 40000, 49999), None);
        assert_eq!(ephemeral_overlap("32768", 40000, 49999), None);
        assert_eq!(ephemeral_overlap("a b", 40000, 49999), None);
        assert_eq!(ephemeral_overlap("1 2 3", 1, 3), None);
    }

    #[test]
    fn range_validation() {
        assert_eq!(
            PortPool::new(30001, 30010).err(),
            Some(PortRangeError::OddStart(30001))
        );
        assert_eq!(
            PortPool::new(30000, 30000).err(),
            Some(PortRangeError::Empty {
                min: 30000,
                max: 30000
            })
        );
        assert_eq!(PortPool::new(0, 10).err(), Some(PortRangeError::ZeroPort));
        // An odd max leaves the last port unused; an even max leaves a lone port out.
        assert_eq!(PortPool::new(30000, 30003).unwrap().capacity(), 2);
        assert_eq!(PortPool::new(30000, 30004).unwrap().capacity(), 2);
        assert_eq!(PortPool::new(65534, 65535).unwrap().capacity(), 1);
        assert_eq!(PortPool::new(2, 65535).unwrap().capacity(), 32767);
    }

    #[test]
    fn allocates_even_pairs_until_exhausted() {
        let mut p = PortPool::new(30000, 30005).unwrap();
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        let c = p.allocate().unwrap();
        assert_eq!([a, b, c], [30000, 30002, 30004]);
        assert_eq!(p.allocate(), None);
        assert_eq!(p.ports_in_use(), 6);
        assert!(p.release(b));
        assert!(!p.release(b), "double release is refused");
        assert!(!p.release(30001), "odd port");
        assert!(!p.release(29998), "below range");
        assert!(!p.release(40000), "above range");
        assert_eq!(p.pairs_in_use(), 2);
        assert_eq!(p.allocate(), Some(30002));
    }

    #[test]
    fn released_pairs_go_to_the_back() {
        let mut p = PortPool::new(30000, 30007).unwrap();
        let a = p.allocate().unwrap();
        assert!(p.release(a));
        assert_eq!(p.allocate(), Some(30002));
        assert_eq!(p.allocate(), Some(30004));
        assert_eq!(p.allocate(), Some(30006));
        assert_eq!(p.allocate(), Some(30000));
    }

    #[test]
    fn lease_returns_pair_on_drop_and_binds() {
        // Ports from the ephemeral-ish high range; the test skips taken pairs itself.
        let pool: SharedPortPool = Arc::new(Mutex::new(PortPool::new(41000, 41199).unwrap()));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let pair = bind_pair(&pool, ip).unwrap();
        assert_eq!(pair.port() % 2, 0);
        assert_eq!(pair.rtp.local_addr().unwrap().port(), pair.port());
        assert_eq!(pair.rtcp.local_addr().unwrap().port(), pair.port() + 1);
        assert_eq!(lock(&pool).pairs_in_use(), 1);
        drop(pair);
        assert_eq!(lock(&pool).pairs_in_use(), 0);
    }

    #[test]
    fn freebind_binds_an_address_this_host_does_not_hold() {
        let pool: SharedPortPool = Arc::new(Mutex::new(PortPool::new(41220, 41223).unwrap()));
        // TEST-NET-3 (RFC 5737): never configured on a test host.
        let absent: IpAddr = "203.0.113.77".parse().unwrap();
        // A host with net.ipv4.ip_nonlocal_bind = 1 binds any address: nothing to compare.
        let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
            .is_ok_and(|v| v.trim() == "1");
        if !nonlocal {
            assert!(
                bind_pair_on(&pool, absent, false).is_err(),
                "a plain bind of an absent address fails"
            );
        }
        let pair = bind_pair_on(&pool, absent, true).unwrap();
        assert_eq!(pair.rtp.local_addr().unwrap().ip(), absent);
        assert_eq!(pair.rtcp.local_addr().unwrap().port(), pair.port() + 1);
        let one = bind_udp(SocketAddr::new(absent, 41230), true).unwrap();
        assert_eq!(one.local_addr().unwrap().port(), 41230);
    }

    #[test]
    fn bind_pair_reports_exhaustion() {
        let pool: SharedPortPool = Arc::new(Mutex::new(PortPool::new(41200, 41203).unwrap()));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut held = Vec::new();
        loop {
            match bind_pair(&pool, ip) {
                Ok(p) => held.push(p),
                Err(e) => {
                    assert_eq!(e, BindError::Exhausted);
                    break;
                }
            }
            assert!(held.len() <= 2);
        }
        held.clear();
        assert_eq!(lock(&pool).pairs_in_use(), 0);
    }
}
