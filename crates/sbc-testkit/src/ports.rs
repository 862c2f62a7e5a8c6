//! Free UDP port ranges for media relays under test.
//!
//! Owns: [`free_udp_range`], which hands each caller a range of loopback UDP ports that
//! bound at the moment of the call, different from every range handed out before in this
//! process. Tests never name a fixed media range: on a busy host (several test binaries,
//! or several checkouts, at once) a fixed range collides. Must not: hold the ports (the
//! engine under test binds them; a port taken in between is stepped over by the pool's
//! bind retries, `sbc_media::ports::BIND_ATTEMPTS`).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port a range starts at.
const FLOOR: u32 = 20_000;
/// Ranges end below this: Linux's default ephemeral range starts at 32768, so the
/// `bind(port 0)` sockets of other tests never land inside a handed-out range.
const CEIL: u32 = 32_768;
/// Ranges tried before giving up: the whole window, with room to step over busy ones.
const ATTEMPTS: u32 = 256;

/// Where the next range starts, as an offset from [`FLOOR`]; seeded from the process id so
/// test binaries running at the same time start in different places.
static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);

/// A range `(min, max)` of `len` loopback UDP ports (`min` even, `len` rounded up to
/// even) that all bound on 127.0.0.1 just now. Panics if no such range is found.
pub fn free_udp_range(len: u16) -> (u16, u16) {
    let len = u32::from(len.max(2)).div_ceil(2) * 2;
    let window = CEIL - FLOOR - len;
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(2_654_435_761) % window) & !1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..ATTEMPTS {
        let offset = (CURSOR.fetch_add(len, Ordering::Relaxed) % window) & !1;
        let min = FLOOR + offset;
        let max = min + len - 1;
        if (min..=max).all(|p| UdpSocket::bind(("127.0.0.1", p as u16)).is_ok()) {
            return (min as u16, max as u16);
        }
    }
    panic!("no free range of {len} UDP ports in {FLOOR}..{CEIL}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_even_disjoint_and_bindable() {
        let a = free_udp_range(100);
        let b = free_udp_range(7);
        assert_eq!(a.0 % 2, 0);
        assert_eq!(a.1 - a.0 + 1, 100);
        assert_eq!(b.1 - b.0 + 1, 8);
        assert!(a.1 < b.0 || b.1 < a.0, "{a:?} and {b:?} overlap");
        assert!(u32::from(a.0) >= FLOOR && u32::from(a.1) < CEIL);
        assert!(UdpSocket::bind(("127.0.0.1", b.0)).is_ok());
    }
}
