//! Recording taps end to end on loopback: an SRTP call through a real engine, a recorder
//! socket receiving the copies (SRTP under the key `start_tap` returned, or plain RTP),
//! and a recorder that never reads, which must cost the call nothing.
//! Each test uses its own port range so they can run in parallel.
#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sbc_core::media::{CallRef, LegSide, MediaControl, MediaEvent, MediaPolicy};
use sbc_core::tap::{TapControl, TapError, TapLegs, TapSpec, TapStatus, TapSuite, TapTransport};
use sbc_core::tenant::TenantId;
use sbc_media::engine::MediaEngine;
use sbc_media::srtp::{MasterKey, SrtpProfile};
use sbc_testkit::media::*;

const CALLER_SSRC: u32 = 0x1111_1111;
const CALLEE_SSRC: u32 = 0x2222_2222;

/// A call of `tenant` with SRTP (AES-128) on both legs, answered.
fn setup(e: &MediaEngine, call: CallRef, tenant: &str) -> SrtpCall {
    SrtpCall::setup(e, call, tenant, &srtp_call_policy(0))
}

fn spec(legs: TapLegs, transport: TapTransport, to: &UdpSocket) -> TapSpec {
    TapSpec {
        legs,
        transport,
        destination: to.local_addr().unwrap(),
    }
}

/// The tap's status once its counters account for `expected` copies (or at the deadline).
fn wait_counted(e: &MediaEngine, call: CallRef, expected: u64) -> Vec<TapStatus> {
    let deadline = Instant::now() + PACKET_WAIT;
    loop {
        let l = e.list_taps(call);
        let done = l
            .iter()
            .all(|t| t.packets_sent + t.packets_dropped >= expected);
        if done || Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn srtp_tap_copies_both_legs_under_its_own_key() {
    let e = engine(100, Duration::from_secs(30));
    let call = CallRef(1);
    let mut c = setup(&e, call, "t1");
    let recorder = peer();
    let info = e
        .start_tap(
            call,
            spec(
                TapLegs::Both,
                TapTransport::Srtp(TapSuite::Aes256CmHmacSha1_80),
                &recorder,
            ),
        )
        .unwrap();
    let inline = info.key.as_ref().expect("an SRTP tap has a key").expose();
    assert!(!format!("{info:?}").contains(inline), "Debug shows no key");
    let material = base64::engine::general_purpose::STANDARD
        .decode(inline.strip_prefix("inline:").expect("inline form"))
        .unwrap();
    assert_eq!(material.len(), 32 + 14, "AES-256 key || salt");
    let p256 = SrtpProfile::Aes256CmHmacSha1_80;
    let mut rec = ctx_for(
        p256,
        &MasterKey::from_concatenated(p256, &material).unwrap(),
    );

    const N: u16 = 20;
    let mut sent = Vec::new();
    for seq in 1..=N {
        let a = rtp(seq, CALLER_SSRC, format!("caller says {seq}").as_bytes());
        assert_eq!(c.caller_to_callee(&a), a);
        let b = rtp(seq, CALLEE_SSRC, format!("callee says {seq}").as_bytes());
        assert_eq!(c.callee_to_caller(&b), b);
        sent.push(a);
        sent.push(b);
    }
    let mut got = Vec::new();
    for _ in 0..2 * N {
        let mut p = recv_packet(&recorder).expect("a tap copy");
        assert_ne!(&p[12..], &sent[0][12..], "copies are encrypted");
        let n = rec
            .unprotect_rtp(&mut p)
            .expect("decrypts under the tap key");
        p.truncate(n);
        got.push(p);
    }
    // Per leg, in order; each leg keeps its own SSRC.
    let leg = |v: &[Vec<u8>], ssrc: u32| -> Vec<Vec<u8>> {
        v.iter()
            .filter(|p| p[8..12] == ssrc.to_be_bytes())
            .cloned()
            .collect()
    };
    assert_eq!(leg(&got, CALLER_SSRC), leg(&sent, CALLER_SSRC));
    assert_eq!(leg(&got, CALLEE_SSRC), leg(&sent, CALLEE_SSRC));
    assert_eq!(leg(&got, CALLER_SSRC).len(), usize::from(N));

    let st = wait_counted(&e, call, 2 * u64::from(N));
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].id, info.id);
    assert_eq!(
        (st[0].packets_sent, st[0].packets_dropped),
        (2 * u64::from(N), 0)
    );
    assert_eq!(e.tap_owner(info.id).unwrap().tenant, TenantId::from("t1"));

    // Stopped: no more copies, the call goes on.
    assert!(e.stop_tap(info.id));
    assert!(!e.stop_tap(info.id));
    assert!(e.list_taps(call).is_empty());
    let a = rtp(N + 1, CALLER_SSRC, b"after");
    assert_eq!(c.caller_to_callee(&a), a);
    recorder
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(recv_packet(&recorder).is_none(), "no copy after stop");
    e.delete(call);
    e.shutdown();
}

#[test]
fn rtp_tap_of_one_leg_is_the_clear_packet() {
    let e = engine(100, Duration::from_secs(30));
    let call = CallRef(7);
    let mut c = setup(&e, call, "t1");
    let recorder = peer();
    let info = e
        .start_tap(call, spec(TapLegs::Caller, TapTransport::Rtp, &recorder))
        .unwrap();
    assert!(info.key.is_none());
    for seq in 1..=10u16 {
        let a = rtp(seq, CALLER_SSRC, &[seq as u8; 160]);
        assert_eq!(c.caller_to_callee(&a), a);
        let b = rtp(seq, CALLEE_SSRC, b"not tapped");
        assert_eq!(c.callee_to_caller(&b), b);
        assert_eq!(recv_packet(&recorder).expect("a copy"), a, "byte for byte");
    }
    let st = wait_counted(&e, call, 10);
    assert_eq!((st[0].packets_sent, st[0].packets_dropped), (10, 0));
    assert_eq!(st[0].legs, TapLegs::Caller);
    assert_eq!(st[0].transport, TapTransport::Rtp);
    // Ending the call ends its taps.
    e.delete(call);
    assert!(e.list_taps(call).is_empty());
    assert!(e.tap_owner(info.id).is_none());
    assert!(!e.stop_tap(info.id));
    e.shutdown();
}

#[test]
fn stalled_or_absent_recorders_cost_the_call_nothing() {
    let e = engine(100, Duration::from_secs(30));
    let call = CallRef(3);
    let mut c = setup(&e, call, "t1");
    // Bound and never read: its receive buffer fills, the kernel drops past it.
    let stalled = UdpSocket::bind("127.0.0.1:0").unwrap();
    // A recorder that is not there: TEST-NET-1 (RFC 5737) is routed nowhere, so the sends
    // vanish or fail (no route), depending on the host; no other test's socket gets them.
    let absent = TapSpec {
        legs: TapLegs::Both,
        transport: TapTransport::Srtp(TapSuite::AesCm128HmacSha1_80),
        destination: "192.0.2.1:40000".parse().unwrap(),
    };
    e.start_tap(call, spec(TapLegs::Both, TapTransport::Rtp, &stalled))
        .unwrap();
    e.start_tap(call, absent).unwrap();

    const N: u64 = 1500;
    let mut received = 0u64;
    let payload = [0x5au8; 160];
    for i in 0..N {
        // Sequence numbers wrap past 65535 only after far more packets.
        let seq = (i + 1) as u16;
        let a = rtp(seq, CALLER_SSRC, &payload);
        if c.caller_to_callee(&a) == a {
            received += 1;
        }
    }
    assert_eq!(received, N, "every call packet relayed");
    let st = wait_counted(&e, call, N);
    assert_eq!(st.len(), 2);
    for t in &st {
        assert_eq!(
            t.packets_sent + t.packets_dropped,
            N,
            "every copy sent or counted as dropped: {t:?}"
        );
    }
    let stats = e.stats();
    assert_eq!(stats.packets_dropped_total, 0, "{stats:?}");
    e.delete(call);
    e.shutdown();
}

/// A packet the tenant's bandwidth limit drops is not copied to a tap (the limit is
/// checked before the copies), and each packet is counted once: relayed, or dropped for
/// one reason.
#[test]
fn packets_over_the_tenant_bandwidth_are_not_copied_to_taps_and_count_once() {
    let e = engine(100, Duration::from_secs(30));
    let call = CallRef(11);
    // 100 kbit/s = 12,500 bytes/s, half per worker (the test engine runs 2), one second
    // deep: about 34 packets of 182 bytes, then the rest of the burst is over.
    let mut c = SrtpCall::setup(&e, call, "limited", &srtp_call_policy(100));
    let recorder = peer();
    e.start_tap(call, spec(TapLegs::Caller, TapTransport::Rtp, &recorder))
        .unwrap();
    const N: u16 = 300;
    for seq in 1..=N {
        send_srtp(
            &c.caller,
            &mut c.k1,
            &rtp(seq, CALLER_SSRC, &[7; 160]),
            c.caller_side.unwrap().port(),
        );
    }
    c.callee
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut relayed = 0u64;
    while let Some(mut p) = recv_packet(&c.callee) {
        assert!(c.k2.unprotect_rtp(&mut p).is_ok());
        relayed += 1;
    }
    assert!(
        relayed > 0 && relayed < u64::from(N),
        "the limit let {relayed} of {N} through"
    );
    let st = wait_counted(&e, call, relayed);
    assert_eq!(
        (st[0].packets_sent, st[0].packets_dropped),
        (relayed, 0),
        "one copy per relayed packet, none of a dropped one"
    );
    let mut copies = 0u64;
    recorder
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while recv_packet(&recorder).is_some() {
        copies += 1;
    }
    assert_eq!(copies, relayed);
    // The worker publishes its counts once per wake-up: wait for the last one.
    let deadline = Instant::now() + PACKET_WAIT;
    let mut s = e.stats();
    while s.packets_relayed + s.packets_dropped_total < u64::from(N) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        s = e.stats();
    }
    let by = |r: &str| s.dropped_by_reason.iter().find(|(x, _)| *x == r).unwrap().1;
    assert_eq!(by("tenant_bandwidth"), u64::from(N) - relayed);
    assert_eq!(
        s.packets_relayed + s.packets_dropped_total,
        u64::from(N),
        "every packet counted once: {s:?}"
    );
    e.delete(call);
    e.shutdown();
}

#[test]
fn refusals_and_limits() {
    let e = engine(100, Duration::from_secs(30));
    let recorder = peer();
    let s = spec(TapLegs::Both, TapTransport::Rtp, &recorder);
    assert_eq!(
        e.start_tap(CallRef(99), s).unwrap_err(),
        TapError::UnknownCall(CallRef(99))
    );
    // Offered, not answered: no media yet.
    let caller = peer();
    let pol = MediaPolicy::default();
    let k = MasterKey::new(&[9; 16], &[9; 14]);
    e.offer(
        CallRef(5),
        &TenantId::from("t1"),
        LegSide::Caller,
        &srtp_call_sdp(&caller, &k, false),
        &pol,
    )
    .unwrap();
    assert_eq!(
        e.start_tap(CallRef(5), s).unwrap_err(),
        TapError::NoMedia(CallRef(5))
    );
    e.delete(CallRef(5));

    let _c = setup(&e, CallRef(6), "t1");
    let mut bad = s;
    bad.destination = "127.0.0.1:0".parse().unwrap();
    assert!(matches!(
        e.start_tap(CallRef(6), bad),
        Err(TapError::Invalid(_))
    ));
    bad.destination = "0.0.0.0:4000".parse().unwrap();
    assert!(matches!(
        e.start_tap(CallRef(6), bad),
        Err(TapError::Invalid(_))
    ));
    for _ in 0..sbc_media::relay::MAX_TAPS_PER_CALL {
        e.start_tap(CallRef(6), s).unwrap();
    }
    assert_eq!(
        e.start_tap(CallRef(6), s).unwrap_err(),
        TapError::TooMany {
            max: sbc_media::relay::MAX_TAPS_PER_CALL
        }
    );
    assert_eq!(
        e.list_taps(CallRef(6)).len(),
        sbc_media::relay::MAX_TAPS_PER_CALL
    );
    e.delete(CallRef(6));
    e.shutdown();
}

#[test]
fn taps_end_when_the_call_times_out() {
    let e = engine(100, Duration::from_millis(300));
    let call = CallRef(11);
    let mut c = setup(&e, call, "t1");
    let recorder = peer();
    let info = e
        .start_tap(call, spec(TapLegs::Both, TapTransport::Rtp, &recorder))
        .unwrap();
    let a = rtp(1, CALLER_SSRC, b"x");
    assert_eq!(c.caller_to_callee(&a), a);
    assert_eq!(recv_packet(&recorder).expect("a copy"), a);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut timed_out = false;
    while !timed_out && Instant::now() < deadline {
        timed_out = e.poll_events().contains(&MediaEvent::Timeout(call));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(timed_out, "media timeout reported");
    assert!(e.list_taps(call).is_empty());
    assert!(e.tap_owner(info.id).is_none());
    e.shutdown();
}
