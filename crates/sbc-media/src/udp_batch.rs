//! Batched UDP I/O: many datagrams per system call.
//!
//! At media rates a relay's cost per packet is system calls and wake-ups, not SRTP
//! (~0.3 µs per protect or unprotect, `benches/README.md`). Workers therefore move packets
//! in batches: [`RecvBatch::recv`] reads up to [`BATCH`] datagrams from one socket with
//! one `recvmmsg(2)`, and [`send_batch`] sends up to [`BATCH`] datagrams, each to its own
//! destination, from one socket with one `sendmmsg(2)`.
//!
//! This is the workspace's only module with `unsafe` (STYLE.md allows one small batch-I/O
//! module). Both calls take arrays of `msghdr` that point at our buffers; the invariants:
//! - every pointer handed to the kernel points into memory borrowed (mutably, for
//!   receive) for the whole call, with the length of that memory;
//! - nothing is read back past the lengths the kernel reports (`msg_len`, `msg_namelen`,
//!   `msg_controllen`), and the address family is checked before an address is read;
//! - headers are rebuilt on every call, so a length the kernel shortened on one call
//!   never limits the next.
//!
//! One datagram per buffer, no GRO/GSO: each packet needs tailroom for its SRTP trailer,
//! and at 50 packets/s per stream two packets of one stream are rarely queued together.
//! Linux only, like the relay.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

/// Datagrams per system call. 32 amortizes the call well; more only grows the stack
/// arrays, since a socket rarely has more queued between two reads.
pub const BATCH: usize = 32;

/// Room for one IPv4 or IPv6 socket address, as the kernel reads and writes it.
#[repr(C)]
#[derive(Clone, Copy)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    fn zeroed() -> RawAddr {
        // SAFETY: both members are plain C structs of integers, valid when all zero.
        unsafe { mem::zeroed() }
    }

    /// The C form of `addr` and its length.
    fn from_socket_addr(addr: SocketAddr) -> (RawAddr, libc::socklen_t) {
        let mut raw = RawAddr::zeroed();
        match addr {
            SocketAddr::V4(a) => {
                raw.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                (raw, mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
            }
            SocketAddr::V6(a) => {
                raw.v6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                (raw, mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
            }
        }
    }

    /// The address the kernel wrote, `len` bytes of it; `None` for another family or a
    /// short address.
    fn to_socket_addr(self, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        // SAFETY: every member starts with the family field and the union was zeroed before
        // the kernel wrote into it, so reading the family is reading initialised integers.
        let family = libc::c_int::from(unsafe { self.v4.sin_family });
        match family {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a whole sockaddr_in (family and length checked).
                let a = unsafe { self.v4 };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the kernel wrote a whole sockaddr_in6 (family and length checked).
                let a = unsafe { self.v6 };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Control-message room per datagram, in u64 words (cmsg alignment): one
/// `SCM_TIMESTAMPNS` (16-byte header + 16-byte timespec) with room to spare.
const CMSG_WORDS: usize = 8;

/// Buffers for one `recvmmsg`: [`BATCH`] slots of `slot_len` bytes, allocated once.
/// After [`RecvBatch::recv`] returned `n`, slots `0..n` hold one datagram each.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    slot_len: usize,
    names: Box<[RawAddr]>,
    /// Control buffers when receive timestamps are wanted.
    cmsgs: Option<Box<[u64]>>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    sources: [Option<SocketAddr>; BATCH],
    stamps: [Option<u64>; BATCH],
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slot_len", &self.slot_len)
            .field("timestamps", &self.cmsgs.is_some())
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Slots of `slot_len` bytes each.
    pub fn new(slot_len: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; slot_len * BATCH].into_boxed_slice(),
            slot_len,
            names: vec![RawAddr::zeroed(); BATCH].into_boxed_slice(),
            cmsgs: None,
            lens: [0; BATCH],
            truncated: [false; BATCH],
            sources: [None; BATCH],
            stamps: [None; BATCH],
        }
    }

    /// Also collects kernel receive timestamps ([`RecvBatch::rx_time_ns`]); the socket
    /// needs [`enable_rx_timestamps`].
    pub fn with_timestamps(mut self) -> RecvBatch {
        self.cmsgs = Some(vec![0u64; CMSG_WORDS * BATCH].into_boxed_slice());
        self
    }

    /// Reads up to [`BATCH`] datagrams of at most `max_len` bytes each (clamped to the
    /// slot); a longer datagram is cut and flagged [`RecvBatch::truncated`]. Never blocks:
    /// `WouldBlock` when nothing is queued. A count below [`BATCH`] means the queue was
    /// empty when the call returned.
    pub fn recv(&mut self, fd: BorrowedFd<'_>, max_len: usize) -> io::Result<usize> {
        let want = max_len.min(self.slot_len);
        let base = self.bufs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let cmsg_base = self.cmsgs.as_mut().map(|c| c.as_mut_ptr());
        // SAFETY: iovec and mmsghdr are C structs of integers and pointers; all-zero
        // (null pointers, zero lengths) is a valid value for both.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (i, (iov, h)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate() {
            // SAFETY: slot i is bytes [i*slot_len, (i+1)*slot_len) of `bufs`, in bounds,
            // and `want` <= slot_len; name i is element i of `names` (BATCH long).
            iov.iov_base = unsafe { base.add(i * self.slot_len) }.cast();
            iov.iov_len = want;
            h.msg_hdr.msg_name = unsafe { names.add(i) }.cast();
            h.msg_hdr.msg_namelen = mem::size_of::<RawAddr>() as libc::socklen_t;
            if let Some(c) = cmsg_base {
                // SAFETY: control buffer i is words [i*CMSG_WORDS, (i+1)*CMSG_WORDS).
                h.msg_hdr.msg_control = unsafe { c.add(i * CMSG_WORDS) }.cast();
                h.msg_hdr.msg_controllen = CMSG_WORDS * mem::size_of::<u64>();
            }
        }
        // The iovec pointers are taken after the array is filled: it does not move again.
        for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        let n = loop {
            // SAFETY: `hdrs` holds BATCH headers whose buffers, names and control buffers
            // are borrowed from `self` (exclusively, through `&mut self`) and `iovs` for
            // the duration of the call, each with its true length.
            let r = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = (h.msg_len as usize).min(want);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.sources[i] = self.names[i].to_socket_addr(h.msg_hdr.msg_namelen);
            self.stamps[i] = if self.cmsgs.is_some() {
                timestamp(&h.msg_hdr)
            } else {
                None
            };
        }
        Ok(n)
    }

    /// Datagram `i`'s length (what was read: at most `max_len`).
    pub fn len(&self, i: usize) -> usize {
        self.lens.get(i).copied().unwrap_or(0)
    }

    /// Whether datagram `i` was longer than `max_len` and was cut.
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated.get(i).copied().unwrap_or(false)
    }

    /// Datagram `i`'s source (`None` for an address family we do not speak).
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        self.sources.get(i).copied().flatten()
    }

    /// Kernel receive time of datagram `i`, ns since the Unix epoch, when collected.
    pub fn rx_time_ns(&self, i: usize) -> Option<u64> {
        self.stamps.get(i).copied().flatten()
    }

    /// Datagram `i`'s bytes.
    pub fn packet(&self, i: usize) -> &[u8] {
        let start = i * self.slot_len;
        self.bufs.get(start..start + self.len(i)).unwrap_or(&[])
    }

    /// Slot `i` whole: the datagram in its first [`RecvBatch::len`] bytes, then room
    /// (for an SRTP trailer, say).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.slot_len;
        self.bufs
            .get_mut(start..start + self.slot_len)
            .unwrap_or(&mut [])
    }

    /// Slot `i` whole, read-only.
    pub fn slot(&self, i: usize) -> &[u8] {
        let start = i * self.slot_len;
        self.bufs.get(start..start + self.slot_len).unwrap_or(&[])
    }
}

/// The `SCM_TIMESTAMPNS` of a received message, as ns since the Unix epoch.
fn timestamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: `h` is a header the kernel filled in `recvmmsg`: msg_control points at our
    // control buffer and msg_controllen is what the kernel wrote there (at most the
    // buffer's size). CMSG_FIRSTHDR/NXTHDR stay within msg_controllen, and the data of a
    // SOL_SOCKET/SCM_TIMESTAMPNS message is one timespec, read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let secs = u64::try_from(ts.tv_sec).ok()?;
                let nsecs = u64::try_from(ts.tv_nsec).ok()?;
                return Some(secs * 1_000_000_000 + nsecs);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Asks the kernel to timestamp every datagram the socket receives (`SO_TIMESTAMPNS`).
pub fn enable_rx_timestamps(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option value is a c_int we own, passed with its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What [`send_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams refused (full send buffer, unreachable, wrong family): dropped.
    pub failed: usize,
    /// Of `failed`, those refused because the socket's send buffer was full
    /// (`EAGAIN`): the receiver, or the path to it, is slow.
    pub full: usize,
}

/// Sends `packets` (datagram, destination) from one socket with as few `sendmmsg` calls
/// as it takes: one, unless a datagram is refused, which is skipped and counted. Never
/// blocks. At most [`BATCH`] packets are sent per call; the rest count as failed, so
/// callers flush at [`BATCH`].
pub fn send_batch<'a>(
    fd: BorrowedFd<'_>,
    packets: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
) -> Sent {
    let mut out = Sent::default();
    let mut names = [RawAddr::zeroed(); BATCH];
    let mut name_lens = [0 as libc::socklen_t; BATCH];
    // SAFETY: as in `recv`: all-zero iovecs and headers are valid.
    let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    let mut count = 0;
    for (data, dest) in packets {
        if count == BATCH {
            out.failed += 1;
            continue;
        }
        (names[count], name_lens[count]) = RawAddr::from_socket_addr(dest);
        // The kernel only reads through this pointer (sendmmsg); iovec's field is `*mut`.
        iovs[count].iov_base = data.as_ptr().cast_mut().cast();
        iovs[count].iov_len = data.len();
        count += 1;
    }
    for (i, h) in hdrs.iter_mut().enumerate().take(count) {
        h.msg_hdr.msg_name = (&mut names[i] as *mut RawAddr).cast();
        h.msg_hdr.msg_namelen = name_lens[i];
        h.msg_hdr.msg_iov = &mut iovs[i];
        h.msg_hdr.msg_iovlen = 1;
    }
    let mut at = 0;
    while at < count {
        // SAFETY: headers at..count point at `names`, `iovs` (locals) and the callers'
        // datagrams (borrowed for this function), each with its length; the kernel only
        // reads them, and writes only msg_len of each header.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr().add(at),
                (count - at) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r > 0 {
            out.sent += r as usize;
            at += r as usize;
        } else if r == 0 {
            // Nothing taken and no error: do not spin; the rest is dropped.
            out.failed += count - at;
            break;
        } else {
            let kind = io::Error::last_os_error().kind();
            if kind == io::ErrorKind::Interrupted {
                continue;
            }
            // The datagram at `at` was refused: drop it, go on with the next.
            out.failed += 1;
            out.full += usize::from(kind == io::ErrorKind::WouldBlock);
            at += 1;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn bound(addr: &str) -> UdpSocket {
        let s = UdpSocket::bind(addr).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    /// Waits until `s` has something queued (loopback delivery is synchronous, but keep
    /// the tests independent of that).
    fn recv_some(b: &mut RecvBatch, s: &UdpSocket, max: usize) -> usize {
        for _ in 0..200 {
            match b.recv(s.as_fd(), max) {
                Ok(n) => return n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        panic!("nothing arrived");
    }

    #[test]
    fn receives_many_datagrams_with_sources_in_one_call() {
        let rx = bound("127.0.0.1:0");
        let senders: Vec<UdpSocket> = (0..3).map(|_| bound("127.0.0.1:0")).collect();
        let dest = rx.local_addr().unwrap();
        for (i, s) in senders.iter().enumerate() {
            s.send_to(&[i as u8; 40], dest).unwrap();
            s.send_to(&[0x80 | i as u8; 100], dest).unwrap();
        }
        let mut b = RecvBatch::new(256);
        let mut got = Vec::new();
        while got.len() < 6 {
            let n = recv_some(&mut b, &rx, 200);
            for i in 0..n {
                got.push((b.packet(i).to_vec(), b.source(i).unwrap(), b.truncated(i)));
            }
        }
        for (i, s) in senders.iter().enumerate() {
            let from = s.local_addr().unwrap();
            let mine: Vec<_> = got.iter().filter(|g| g.1 == from).collect();
            assert_eq!(mine.len(), 2);
            assert_eq!(mine[0].0, vec![i as u8; 40]);
            assert_eq!(mine[1].0, vec![0x80 | i as u8; 100]);
            assert!(!mine[0].2 && !mine[1].2);
        }
        // Drained: the next read would block.
        let e = b.recv(rx.as_fd(), 200).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn more_than_a_batch_takes_two_calls_and_oversize_is_flagged() {
        let rx = bound("127.0.0.1:0");
        let tx = bound("127.0.0.1:0");
        let dest = rx.local_addr().unwrap();
        for i in 0..BATCH + 5 {
            tx.send_to(&[i as u8; 20], dest).unwrap();
        }
        tx.send_to(&[7u8; 300], dest).unwrap();
        let mut b = RecvBatch::new(128);
        assert_eq!(recv_some(&mut b, &rx, 100), BATCH);
        assert_eq!(b.packet(BATCH - 1), &[(BATCH - 1) as u8; 20][..]);
        let n = recv_some(&mut b, &rx, 100);
        assert_eq!(n, 6);
        assert_eq!(b.packet(4), &[(BATCH + 4) as u8; 20][..]);
        assert!(!b.truncated(4));
        assert!(
            b.truncated(5),
            "a 300-byte datagram read into 100 bytes is cut"
        );
        assert_eq!(b.len(5), 100);
        // The slot keeps its room past the datagram.
        assert_eq!(b.slot_mut(5).len(), 128);
    }

    #[test]
    fn sends_to_many_destinations_in_one_call() {
        let tx = bound("127.0.0.1:0");
        let rxs: Vec<UdpSocket> = (0..4).map(|_| bound("127.0.0.1:0")).collect();
        let payloads: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8 + 1; 50 + i]).collect();
        let packets: Vec<(&[u8], SocketAddr)> = payloads
            .iter()
            .zip(&rxs)
            .map(|(p, r)| (p.as_slice(), r.local_addr().unwrap()))
            .collect();
        assert_eq!(
            send_batch(tx.as_fd(), packets),
            Sent {
                sent: 4,
                failed: 0,
                full: 0
            }
        );
        let mut b = RecvBatch::new(256);
        for (r, p) in rxs.iter().zip(&payloads) {
            assert_eq!(recv_some(&mut b, r, 200), 1);
            assert_eq!(b.packet(0), p.as_slice());
            assert_eq!(b.source(0), Some(tx.local_addr().unwrap()));
        }
    }

    #[test]
    fn a_refused_datagram_is_counted_and_the_rest_still_go() {
        let tx = bound("127.0.0.1:0");
        let rx = bound("127.0.0.1:0");
        let ok = rx.local_addr().unwrap();
        // An IPv6 destination from an IPv4 socket is refused by the kernel.
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        let packets: Vec<(&[u8], SocketAddr)> =
            vec![(b"one", ok), (b"bad", bad), (b"two", ok), (b"bad", bad)];
        assert_eq!(
            send_batch(tx.as_fd(), packets),
            Sent {
                sent: 2,
                failed: 2,
                full: 0
            }
        );
        let mut b = RecvBatch::new(64);
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = recv_some(&mut b, &rx, 64);
            got.extend((0..n).map(|i| b.packet(i).to_vec()));
        }
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        // Past BATCH, the excess is counted, not sent.
        let many: Vec<(&[u8], SocketAddr)> = (0..BATCH + 3).map(|_| (&b"x"[..], ok)).collect();
        assert_eq!(
            send_batch(tx.as_fd(), many),
            Sent {
                sent: BATCH,
                failed: 3,
                full: 0
            }
        );
    }

    #[test]
    fn ipv6_sources_and_receive_timestamps() {
        let Ok(rx) = UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        rx.set_nonblocking(true).unwrap();
        enable_rx_timestamps(rx.as_fd()).unwrap();
        let tx = bound("[::1]:0");
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let sent = send_batch(
            tx.as_fd(),
            [
                (&b"v6"[..], rx.local_addr().unwrap()),
                (&b"v6b"[..], rx.local_addr().unwrap()),
            ],
        );
        assert_eq!(sent.sent, 2);
        let mut b = RecvBatch::new(64).with_timestamps();
        let n = recv_some(&mut b, &rx, 64);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(n >= 1);
        assert_eq!(b.packet(0), b"v6");
        assert_eq!(b.source(0), Some(tx.local_addr().unwrap()));
        let t = b.rx_time_ns(0).expect("kernel timestamp");
        assert!(
            t as u128 + 1_000_000 >= before.as_nanos() && t as u128 <= after.as_nanos() + 1_000_000,
            "timestamp {t} outside [{before:?}, {after:?}]"
        );
    }
}
