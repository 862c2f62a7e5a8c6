//! The relay path allocates nothing per packet: a counting global allocator sees zero
//! allocations while a worker thread receives, unprotects, re-protects and sends a few
//! hundred packets through a real engine on loopback (SRTP -> SRTP and SRTP -> plain,
//! and SRTP -> SRTP with an SRTP recording tap copying both legs).
//!
//! `harness = false` for the reason given in srtp_no_alloc.rs: the allocator counts every
//! thread, so only our main thread and the engine's worker may run while it counts.

#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::time::Duration;

use sbc_core::media::{CallRef, LegPolicy, LegSide, MediaControl, MediaPolicy, SrtpMode};
use sbc_core::tap::{TapControl, TapLegs, TapSpec, TapSuite, TapTransport};
use sbc_core::tenant::TenantId;
use sbc_media::engine::{MediaEngine, MediaSettings};
use sbc_media::sdp;
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};
use sbc_testkit::media::{master_bytes, Sdp};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const PACKETS: u16 = 300;

/// A peer's SDP at `sock`'s port with rtcp-mux: SRTP with `key`, or plain RTP without.
fn sdp_for(sock: &UdpSocket, key: Option<&MasterKey>) -> Vec<u8> {
    let sdp = Sdp::audio(sock.local_addr().unwrap().port()).rtcp_mux();
    match key {
        Some(k) => sdp.crypto(1, "AES_CM_128_HMAC_SHA1_80", &master_bytes(k)),
        None => sdp.plain(),
    }
    .bytes()
}

/// Runs one call through the engine and returns allocations counted while relaying; with
/// `tap`, an SRTP recording tap of both legs copies every packet to a recorder socket.
fn run(e: &MediaEngine, call: CallRef, callee_plain: bool, tap: bool) -> usize {
    let p = SrtpProfile::AesCm128HmacSha1_80;
    let suites = vec![p.as_str().to_string()];
    let pol = MediaPolicy {
        caller: LegPolicy {
            srtp: SrtpMode::Required,
            suites: suites.clone(),
        },
        callee: LegPolicy {
            srtp: if callee_plain {
                SrtpMode::Plain
            } else {
                SrtpMode::Required
            },
            suites,
        },
        ..MediaPolicy::default()
    };
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    callee
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let k1 = MasterKey::new(&[1; 16], &[2; 14]);
    let k3 = MasterKey::new(&[3; 16], &[4; 14]);
    let out = e
        .offer(
            call,
            &TenantId::from("t"),
            LegSide::Caller,
            &sdp_for(&caller, Some(&k1)),
            &pol,
        )
        .unwrap();
    let offer = sdp::parse(&out).unwrap();
    let k2 = offer.media[0].crypto.first().and_then(|c| c.key.clone());
    let answer_in = sdp_for(&callee, if callee_plain { None } else { Some(&k3) });
    let out = e.answer(call, LegSide::Callee, &answer_in).unwrap();
    let engine_port = sdp::parse(&out).unwrap().media[0].port;
    let dest = std::net::SocketAddr::from(([127, 0, 0, 1], engine_port));
    let recorder = UdpSocket::bind("127.0.0.1:0").unwrap();
    recorder
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    if tap {
        let spec = TapSpec {
            legs: TapLegs::Both,
            transport: TapTransport::Srtp(TapSuite::AesCm128HmacSha1_80),
            destination: recorder.local_addr().unwrap(),
        };
        e.start_tap(call, spec).unwrap();
    }
    let mut copy = [0u8; 1500];

    let mut tx = SrtpContext::new(p, &k1, SrtpConfig::default()).unwrap();
    let mut rx = k2.map(|k| SrtpContext::new(p, &k, SrtpConfig::default()).unwrap());
    let mut buf = [0u8; 1500];
    let mut got = [0u8; 1500];
    let mut one = |seq: u16, buf: &mut [u8; 1500], got: &mut [u8; 1500]| {
        let len = 12 + 160;
        buf[..len].fill(0xa5);
        buf[0] = 0x80;
        buf[1] = 0;
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        let n = tx.protect_rtp(buf, len).unwrap();
        caller.send_to(&buf[..n], dest).unwrap();
        let (m, _) = callee.recv_from(got).unwrap();
        let m = match rx.as_mut() {
            Some(rx) => rx.unprotect_rtp(&mut got[..m]).unwrap(),
            None => m,
        };
        assert_eq!(m, len);
        assert!(got[12..len].iter().all(|b| *b == 0xa5));
        if tap {
            let (m, _) = recorder.recv_from(&mut copy).unwrap();
            assert_eq!(m, len + 10, "an SRTP copy of the packet");
        }
    };
    // Warm-up: latching and per-SSRC state on every context.
    for seq in 1..=10 {
        one(seq, &mut buf, &mut got);
    }
    let region = Region::new(GLOBAL);
    for seq in 11..11 + PACKETS {
        one(seq, &mut buf, &mut got);
    }
    let c = region.change();
    e.delete(call);
    c.allocations + c.reallocations
}

fn main() {
    let lo = "127.0.0.1".parse().unwrap();
    let (min, max) = sbc_testkit::ports::free_udp_range(100);
    let mut s = MediaSettings::new(lo, lo, min, max);
    s.workers = 1;
    let e = MediaEngine::start(s).unwrap();
    // The counter works at all.
    let region = Region::new(GLOBAL);
    let v = std::hint::black_box(vec![1u8; 32]);
    assert!(region.change().allocations > 0);
    drop(v);

    let n = run(&e, CallRef(1), false, false);
    assert_eq!(n, 0, "SRTP -> SRTP: {n} allocations for {PACKETS} packets");
    let n = run(&e, CallRef(2), true, false);
    assert_eq!(n, 0, "SRTP -> plain: {n} allocations for {PACKETS} packets");
    let n = run(&e, CallRef(3), false, true);
    assert_eq!(
        n, 0,
        "SRTP -> SRTP with an SRTP tap: {n} allocations for {PACKETS} packets"
    );
    e.shutdown();
    println!("test relay_path_allocates_nothing ... ok");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
