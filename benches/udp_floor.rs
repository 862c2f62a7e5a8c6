//! The kernel's floor under the media relay: what it costs on this machine to move one
//! UDP packet in and out of a per-leg socket with the relay's own system calls, and
//! nothing else (no SRTP, no latching, no bookkeeping).
//!
//! `SBC_FLOOR_SOCKETS` relay sockets (default 2000, one per leg of 1000 calls) on
//! loopback; a generator thread sends `SBC_FLOOR_PPS` packets/s (default 100,000, 172
//! bytes) round-robin to them with `sendmmsg`; one relay thread waits in `epoll_wait`
//! (edge-triggered, through mio as the relay does), reads each ready socket with
//! `recvmmsg` and sends what it read back out of the same socket with `sendmmsg`, to a
//! sink that drains every 500 µs. Relay CPU is the thread's own utime + stime
//! (`/proc/thread-self/stat`), divided by the packets it sent. Compare with
//! `media_load`'s CPU per relayed packet in the same hour: the difference is what SRTP
//! and the relay's own work add. Runs `SBC_FLOOR_SECS` (default 8) seconds.
//!
//! Run: `cargo bench --bench udp_floor`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use sbc_media::udp_batch::{send_batch, RecvBatch, BATCH};
use util::{cpu_seconds, env};

mod util;

const PACKET: usize = 172;

fn main() {
    let n = env("SBC_FLOOR_SOCKETS", 2000) as usize;
    let pps = env("SBC_FLOOR_PPS", 100_000);
    let secs = env("SBC_FLOOR_SECS", 8);
    // Asks the clock tick rate now, so that no thread's measure includes the asking.
    cpu_seconds("self");
    let relays: Vec<mio::net::UdpSocket> = (0..n)
        .map(|_| mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = relays.iter().map(|s| s.local_addr().unwrap()).collect();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_nonblocking(true).unwrap();
    let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(4 << 20);
    let sink_addr = sink.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));

    let (st, got) = (Arc::clone(&stop), Arc::clone(&delivered));
    let sink_thread = std::thread::spawn(move || {
        let mut b = RecvBatch::new(2048);
        while !st.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_micros(500));
            while let Ok(k) = b.recv(sink.as_fd(), 2048) {
                got.fetch_add(k as u64, Ordering::Relaxed);
                if k < BATCH {
                    break;
                }
            }
        }
    });

    let st = Arc::clone(&stop);
    let relay_thread = std::thread::spawn(move || {
        let mut relays = relays;
        let mut poll = Poll::new().unwrap();
        for (i, s) in relays.iter_mut().enumerate() {
            poll.registry()
                .register(s, Token(i), Interest::READABLE)
                .unwrap();
        }
        let mut events = Events::with_capacity(256);
        let mut b = RecvBatch::new(2048);
        let cpu0 = cpu_seconds("thread-self");
        let mut relayed = 0u64;
        while !st.load(Ordering::Relaxed) {
            if poll
                .poll(&mut events, Some(Duration::from_millis(100)))
                .is_err()
            {
                continue;
            }
            for ev in events.iter() {
                let sock = &relays[ev.token().0];
                while let Ok(k) = b.recv(sock.as_fd(), 2048) {
                    let out = (0..k).map(|i| (b.packet(i), sink_addr));
                    relayed += send_batch(sock.as_fd(), out).sent as u64;
                    if k < BATCH {
                        break;
                    }
                }
            }
        }
        (relayed, cpu_seconds("thread-self") - cpu0)
    });

    let source = UdpSocket::bind("127.0.0.1:0").unwrap();
    let packet = [0x80u8; PACKET];
    let total = pps * secs;
    let start = Instant::now();
    let mut k = 0u64;
    while k < total {
        let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let due = (elapsed.saturating_mul(pps) / 1_000_000_000).min(total);
        if due <= k {
            std::thread::sleep(Duration::from_micros(250));
            continue;
        }
        while k < due {
            let m = ((due - k) as usize).min(BATCH);
            let out = (0..m).map(|j| (&packet[..], addrs[(k as usize + j) % n]));
            send_batch(source.as_fd(), out);
            k += m as u64;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (relayed, cpu) = relay_thread.join().unwrap();
    sink_thread.join().unwrap();
    println!(
        "udp_floor: {n} sockets, {pps} packets/s for {secs} s: sent {total}, relayed {relayed}, delivered {}",
        delivered.load(Ordering::Relaxed)
    );
    println!(
        "udp_floor: relay thread CPU {cpu:.2} s = {:.2} µs per relayed packet (epoll + recvmmsg + sendmmsg, no SRTP)",
        cpu * 1e6 / relayed.max(1) as f64
    );
}
