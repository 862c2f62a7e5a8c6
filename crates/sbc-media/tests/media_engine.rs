//! The media engine end to end on loopback: real UDP sockets as the two peers, SDP
//! through `MediaControl`, SRTP with the keys each side saw in the other's SDP.
//! Each test uses its own port range so they can run in parallel.
#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use sbc_core::media::{
    CallRef, LegPolicy, LegSide, MediaControl, MediaError, MediaEvent, MediaPolicy, SrtpMode,
};
use sbc_core::tenant::TenantId;
use sbc_media::engine::{MediaEngine, MediaSettings, MediaStats};
use sbc_media::sdp;
use sbc_media::srtp::{MasterKey, SrtpProfile};
use sbc_testkit::media::*;

fn policy(caller: SrtpMode, callee: SrtpMode) -> MediaPolicy {
    MediaPolicy {
        caller: LegPolicy {
            srtp: caller,
            suites: vec![
                "AES_CM_128_HMAC_SHA1_80".into(),
                "AES_256_CM_HMAC_SHA1_80".into(),
            ],
        },
        callee: LegPolicy {
            srtp: callee,
            suites: vec![
                "AES_256_CM_HMAC_SHA1_80".into(),
                "AES_CM_128_HMAC_SHA1_80".into(),
            ],
        },
        ..MediaPolicy::default()
    }
}

fn key(profile: SrtpProfile, fill: u8) -> MasterKey {
    MasterKey::new(
        &vec![fill; profile.master_key_len()],
        &vec![fill ^ 0x5a; profile.master_salt_len()],
    )
}

/// An SDP from a peer at `sock` with optional crypto lines `(tag, profile, key)`: RTP/AVP
/// without them, each key with a lifetime.
fn peer_sdp(sock: &UdpSocket, crypto: &[(u32, SrtpProfile, &MasterKey)], mux: bool) -> Vec<u8> {
    let mut sdp = Sdp::audio(sock.local_addr().unwrap().port())
        .telephone_event(true)
        .ptime()
        .sendrecv();
    if crypto.is_empty() {
        sdp = sdp.plain();
    }
    if mux {
        sdp = sdp.rtcp_mux();
    }
    for (tag, p, k) in crypto {
        sdp = sdp.crypto_with_lifetime(*tag, p.as_str(), &master_bytes(k), "2^31");
    }
    sdp.bytes()
}

fn wait_stats(e: &MediaEngine, pred: impl Fn(&MediaStats) -> bool) -> MediaStats {
    let deadline = Instant::now() + PACKET_WAIT;
    loop {
        let s = e.stats();
        if pred(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the two peers learned from the engine's SDP.
struct Call {
    caller: UdpSocket,
    callee: UdpSocket,
    /// Engine port the caller sends to / the callee sends to.
    caller_side_port: u16,
    callee_side_port: u16,
    /// Caller -> engine (K1), engine -> callee (K2), callee -> engine (K3), engine -> caller (K4).
    k1: (SrtpProfile, MasterKey),
    k2: (SrtpProfile, MasterKey),
    k3: (SrtpProfile, MasterKey),
    k4: (SrtpProfile, MasterKey),
    offer_out: sdp::SessionDescription,
    answer_out: sdp::SessionDescription,
}

fn setup_srtp_call(e: &MediaEngine, call: CallRef, mux: bool) -> Call {
    let pol = policy(SrtpMode::Required, SrtpMode::Required);
    setup_srtp_call_for(e, call, mux, "t1", &pol)
}

fn setup_srtp_call_for(
    e: &MediaEngine,
    call: CallRef,
    mux: bool,
    tenant: &str,
    pol: &MediaPolicy,
) -> Call {
    let caller = peer();
    let callee = peer();
    let p128 = SrtpProfile::AesCm128HmacSha1_80;
    let k1 = key(p128, 0x11);
    let offer_in = peer_sdp(&caller, &[(1, p128, &k1)], mux);
    let out = e
        .offer(
            call,
            &TenantId::from(tenant),
            LegSide::Caller,
            &offer_in,
            pol,
        )
        .unwrap();
    let offer_out = sdp::parse(&out).unwrap();
    let m = &offer_out.media[0];
    assert_eq!(m.proto, Some(sdp::RtpProto::Savp));
    let suites: Vec<_> = m
        .crypto
        .iter()
        .map(|c| (c.tag, c.profile.unwrap()))
        .collect();
    assert_eq!(
        suites,
        [
            (1, SrtpProfile::Aes256CmHmacSha1_80),
            (2, SrtpProfile::AesCm128HmacSha1_80)
        ],
        "callee policy order"
    );
    let (p256, k2) = (
        SrtpProfile::Aes256CmHmacSha1_80,
        m.crypto[0].key.clone().unwrap(),
    );
    let callee_side_port = m.port;
    let k3 = key(p256, 0x33);
    let answer_in = peer_sdp(&callee, &[(1, p256, &k3)], mux);
    let out = e.answer(call, LegSide::Callee, &answer_in).unwrap();
    let answer_out = sdp::parse(&out).unwrap();
    let a = &answer_out.media[0];
    assert_eq!(a.crypto.len(), 1, "an answer carries exactly one key");
    assert_eq!((a.crypto[0].tag, a.crypto[0].profile), (1, Some(p128)));
    let k4 = a.crypto[0].key.clone().unwrap();
    let caller_side_port = a.port;
    Call {
        caller,
        callee,
        caller_side_port,
        callee_side_port,
        k1: (p128, k1),
        k2: (p256, k2),
        k3: (p256, k3),
        k4: (p128, k4),
        offer_out,
        answer_out,
    }
}

#[test]
fn srtp_call_end_to_end_both_directions() {
    let e = engine(100, Duration::from_secs(60));
    let c = setup_srtp_call(&e, CallRef(1), true);

    // SDP: our address, our ports, mux kept, codecs untouched, no key echoed.
    for sd in [&c.offer_out, &c.answer_out] {
        assert_eq!(
            sd.connection.unwrap().address,
            Some("127.0.0.1".parse().unwrap())
        );
        assert!(sd.media[0].rtcp_mux);
        assert_eq!(sd.media[0].formats, ["0", "101"]);
    }
    assert_ne!(c.k2.1.key, c.k1.1.key[..].repeat(2));
    assert_ne!(c.k4.1.key, c.k1.1.key, "fresh key toward the caller");
    assert_ne!(c.caller_side_port, c.callee_side_port);
    assert_eq!(c.caller_side_port % 2, 0);
    assert_eq!(e.stats().ports_in_use, 4);

    let mut tx1 = ctx_for(c.k1.0, &c.k1.1);
    let mut rx2 = ctx_for(c.k2.0, &c.k2.1);
    let mut tx3 = ctx_for(c.k3.0, &c.k3.1);
    let mut rx4 = ctx_for(c.k4.0, &c.k4.1);
    for seq in 1..=5u16 {
        let pkt = rtp(seq, 0xCA11E4, format!("caller {seq}").as_bytes());
        send_srtp(&c.caller, &mut tx1, &pkt, c.caller_side_port);
        assert_eq!(recv_srtp(&c.callee, &mut rx2), pkt);

        let pkt = rtp(seq, 0xCA11EE, format!("callee {seq}").as_bytes());
        send_srtp(&c.callee, &mut tx3, &pkt, c.callee_side_port);
        assert_eq!(recv_srtp(&c.caller, &mut rx4), pkt);
    }

    // SRTCP, muxed on the RTP port.
    let sr = [
        0x80u8, 200, 0, 6, 0, 0xCA, 0x11, 0xE4, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, 0, 0, 0, 5, 0,
        0, 0, 9,
    ];
    let mut buf = vec![0u8; 128];
    buf[..sr.len()].copy_from_slice(&sr);
    let n = tx1.protect_rtcp(&mut buf, sr.len()).unwrap();
    c.caller
        .send_to(&buf[..n], ("127.0.0.1", c.caller_side_port))
        .unwrap();
    let mut got = recv_packet(&c.callee).expect("relayed SRTCP");
    let n = rx2.unprotect_rtcp(&mut got).unwrap();
    assert_eq!(&got[..n], &sr[..]);

    let s = wait_stats(&e, |s| s.packets_relayed >= 11);
    assert_eq!(s.packets_relayed, 11);
    assert_eq!(s.packets_dropped_total, 0);
    assert_eq!((s.active_calls, s.active_streams), (1, 1));

    e.delete(CallRef(1));
    let s = wait_stats(&e, |s| s.ports_in_use == 0);
    assert_eq!(
        (s.ports_in_use, s.active_calls, s.active_streams),
        (0, 0, 0)
    );
    e.shutdown();
}

#[test]
fn forged_packet_is_dropped_and_does_not_latch() {
    let e = engine(100, Duration::from_secs(60));
    let c = setup_srtp_call(&e, CallRef(7), false);
    let attacker = peer();
    attacker
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    // Right key, flipped tag, from another address, before the caller sent anything.
    let mut forger = ctx_for(c.k1.0, &c.k1.1);
    let pkt = rtp(1, 0xBAD, b"forged");
    let mut buf = vec![0u8; 128];
    buf[..pkt.len()].copy_from_slice(&pkt);
    let n = forger.protect_rtp(&mut buf, pkt.len()).unwrap();
    buf[n - 1] ^= 0xff;
    attacker
        .send_to(&buf[..n], ("127.0.0.1", c.caller_side_port))
        .unwrap();
    // And one under a key nobody announced.
    let mut wrong = ctx_for(c.k1.0, &key(c.k1.0, 0x99));
    send_srtp(
        &attacker,
        &mut wrong,
        &rtp(2, 0xBAD, b"wrong key"),
        c.caller_side_port,
    );

    let s = wait_stats(&e, |s| s.packets_dropped_auth >= 2);
    assert_eq!(s.packets_dropped_auth, 2);
    assert_eq!(s.packets_relayed, 0);
    assert!(s
        .dropped_by_reason
        .iter()
        .any(|(r, n)| *r == "auth_failed" && *n == 2));

    // The callee got nothing; media toward the caller still goes to the caller.
    c.callee
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(recv_packet(&c.callee).is_none());
    let mut tx3 = ctx_for(c.k3.0, &c.k3.1);
    let mut rx4 = ctx_for(c.k4.0, &c.k4.1);
    let back = rtp(1, 0xCA11EE, b"to the caller");
    send_srtp(&c.callee, &mut tx3, &back, c.callee_side_port);
    assert_eq!(recv_srtp(&c.caller, &mut rx4), back);
    assert!(
        recv_packet(&attacker).is_none(),
        "the attacker did not latch"
    );

    // An authentic caller packet from the caller's address is relayed.
    let mut tx1 = ctx_for(c.k1.0, &c.k1.1);
    let mut rx2 = ctx_for(c.k2.0, &c.k2.1);
    c.callee.set_read_timeout(Some(PACKET_WAIT)).unwrap();
    let pkt = rtp(1, 0xCA11E4, b"real");
    send_srtp(&c.caller, &mut tx1, &pkt, c.caller_side_port);
    assert_eq!(recv_srtp(&c.callee, &mut rx2), pkt);
    e.shutdown();
}

#[test]
fn plain_rtp_inside_leg() {
    let e = engine(100, Duration::from_secs(60));
    let caller = peer();
    let callee = peer();
    let p = SrtpProfile::AesCm128HmacSha1_80;
    let k1 = key(p, 0x21);
    let pol = policy(SrtpMode::Required, SrtpMode::Plain);
    let out = e
        .offer(
            CallRef(3),
            &TenantId::from("t1"),
            LegSide::Caller,
            &peer_sdp(&caller, &[(5, p, &k1)], false),
            &pol,
        )
        .unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.contains(" RTP/AVP 0 101\r\n"), "{text}");
    assert!(!text.contains("a=crypto"), "{text}");
    let callee_side_port = sdp::parse(&out).unwrap().media[0].port;

    let out = e
        .answer(CallRef(3), LegSide::Callee, &peer_sdp(&callee, &[], false))
        .unwrap();
    let ans = sdp::parse(&out).unwrap();
    let m = &ans.media[0];
    assert_eq!(m.proto, Some(sdp::RtpProto::Savp));
    assert_eq!((m.crypto.len(), m.crypto[0].tag), (1, 5), "the offer's tag");
    let k4 = m.crypto[0].key.clone().unwrap();

    let mut tx1 = ctx_for(p, &k1);
    let pkt = rtp(100, 42, b"to plain");
    send_srtp(&caller, &mut tx1, &pkt, m.port);
    assert_eq!(
        recv_packet(&callee).unwrap(),
        pkt,
        "decrypted for the plain leg"
    );

    let back = rtp(7, 43, b"from plain");
    callee
        .send_to(&back, ("127.0.0.1", callee_side_port))
        .unwrap();
    let mut rx4 = ctx_for(p, &k4);
    assert_eq!(recv_srtp(&caller, &mut rx4), back);
    e.shutdown();
}

#[test]
fn media_timeout_emits_event_and_frees_ports() {
    let e = engine(100, Duration::from_millis(400));
    let c = setup_srtp_call(&e, CallRef(9), true);
    assert_eq!(e.stats().ports_in_use, 4);
    // Keep a second call alive with traffic while the first times out.
    let live = setup_srtp_call(&e, CallRef(10), true);
    let mut tx1 = ctx_for(live.k1.0, &live.k1.1);
    let started = Instant::now();
    let mut events = Vec::new();
    let mut seq = 1u16;
    while started.elapsed() < Duration::from_secs(3) && events.is_empty() {
        send_srtp(
            &live.caller,
            &mut tx1,
            &rtp(seq, 1, b"keepalive"),
            live.caller_side_port,
        );
        seq += 1;
        std::thread::sleep(Duration::from_millis(50));
        events.extend(e.poll_events());
    }
    let elapsed = started.elapsed();
    assert_eq!(events, [MediaEvent::Timeout(CallRef(9))]);
    assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    let s = e.stats();
    assert_eq!(
        (s.active_calls, s.ports_in_use),
        (1, 4),
        "only the live call remains"
    );
    assert!(e.poll_events().is_empty(), "reported once");
    assert_eq!(
        e.answer(
            CallRef(9),
            LegSide::Callee,
            &peer_sdp(&c.callee, &[], false)
        ),
        Err(MediaError::UnknownCall(CallRef(9)))
    );
    e.shutdown();
}

#[test]
fn port_exhaustion_gives_no_ports() {
    // Two pairs: one call with one stream takes both.
    let e = engine(4, Duration::from_secs(60));
    let p = SrtpProfile::AesCm128HmacSha1_80;
    let k = key(p, 1);
    let caller = peer();
    let pol = policy(SrtpMode::Required, SrtpMode::Required);
    let t = TenantId::from("t1");
    let offer = peer_sdp(&caller, &[(1, p, &k)], false);
    e.offer(CallRef(1), &t, LegSide::Caller, &offer, &pol)
        .unwrap();
    assert_eq!(e.stats().ports_in_use, 4);
    let err = e
        .offer(CallRef(2), &t, LegSide::Caller, &offer, &pol)
        .unwrap_err();
    assert_eq!(err, MediaError::NoPorts);
    assert_eq!(err.sip_status(), 503);
    let s = e.stats();
    assert_eq!(
        (s.active_calls, s.ports_in_use),
        (1, 4),
        "failed offer holds nothing"
    );
    e.delete(CallRef(1));
    assert_eq!(e.stats().ports_in_use, 0);
    e.offer(CallRef(2), &t, LegSide::Caller, &offer, &pol)
        .unwrap();
    e.shutdown();
}

#[test]
fn not_acceptable_cases() {
    let e = engine(100, Duration::from_secs(60));
    let caller = peer();
    let t = TenantId::from("t1");
    let pol = policy(SrtpMode::Required, SrtpMode::Required);
    let k32 = key(SrtpProfile::AesCm128HmacSha1_32, 3);

    // SRTP required, plain offered.
    let r = e.offer(
        CallRef(1),
        &t,
        LegSide::Caller,
        &peer_sdp(&caller, &[], false),
        &pol,
    );
    assert!(
        matches!(r, Err(MediaError::NotAcceptable(ref m)) if m.contains("SRTP required")),
        "{r:?}"
    );
    // Only a suite the policy does not allow.
    let r = e.offer(
        CallRef(1),
        &t,
        LegSide::Caller,
        &peer_sdp(
            &caller,
            &[(1, SrtpProfile::AesCm128HmacSha1_32, &k32)],
            false,
        ),
        &pol,
    );
    assert!(
        matches!(r, Err(MediaError::NotAcceptable(ref m)) if m.contains("suite")),
        "{r:?}"
    );
    // Malformed.
    let r = e.offer(CallRef(1), &t, LegSide::Caller, b"hello", &pol);
    assert!(matches!(r, Err(MediaError::Malformed(_))), "{r:?}");
    assert_eq!(r.unwrap_err().sip_status(), 488);
    // Too many m-lines (default max_streams 8).
    let k = key(SrtpProfile::AesCm128HmacSha1_80, 4);
    let one = String::from_utf8(peer_sdp(
        &caller,
        &[(1, SrtpProfile::AesCm128HmacSha1_80, &k)],
        false,
    ))
    .unwrap();
    let (head, media) = one.split_at(one.find("m=").unwrap());
    let nine = format!("{head}{}", media.repeat(9));
    let r = e.offer(CallRef(1), &t, LegSide::Caller, nine.as_bytes(), &pol);
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
    // Unknown call.
    assert_eq!(
        e.answer(CallRef(77), LegSide::Callee, one.as_bytes()),
        Err(MediaError::UnknownCall(CallRef(77)))
    );
    assert_eq!(e.stats().ports_in_use, 0, "refused offers allocate nothing");

    // An answer whose crypto matches nothing we offered.
    e.offer(CallRef(2), &t, LegSide::Caller, one.as_bytes(), &pol)
        .unwrap();
    let callee = peer();
    let bad = peer_sdp(
        &callee,
        &[(
            9,
            SrtpProfile::Aes256CmHmacSha1_80,
            &key(SrtpProfile::Aes256CmHmacSha1_80, 5),
        )],
        false,
    );
    let r = e.answer(CallRef(2), LegSide::Callee, &bad);
    assert!(
        matches!(r, Err(MediaError::NotAcceptable(ref m)) if m.contains("does not match")),
        "{r:?}"
    );
    // Answer from the offering side.
    let r = e.answer(CallRef(2), LegSide::Caller, one.as_bytes());
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
    // Plain answer where the callee requires SRTP.
    let r = e.answer(CallRef(2), LegSide::Callee, &peer_sdp(&callee, &[], false));
    assert!(matches!(r, Err(MediaError::NotAcceptable(_))), "{r:?}");
    e.delete(CallRef(2));
    assert_eq!(e.stats().ports_in_use, 0);
    e.shutdown();
}

#[test]
fn reoffer_same_keys_keeps_state_and_new_keys_rekey() {
    let e = engine(100, Duration::from_secs(60));
    let call = CallRef(5);
    let c = setup_srtp_call(&e, call, true);
    let mut tx1 = ctx_for(c.k1.0, &c.k1.1);
    let mut rx2 = ctx_for(c.k2.0, &c.k2.1);
    let mut tx3 = ctx_for(c.k3.0, &c.k3.1);
    let mut rx4 = ctx_for(c.k4.0, &c.k4.1);
    let pkt = rtp(1, 0xA, b"before");
    send_srtp(&c.caller, &mut tx1, &pkt, c.caller_side_port);
    assert_eq!(recv_srtp(&c.callee, &mut rx2), pkt);

    // Same SDP again: same ports and keys, SRTP state kept (a replay is still refused).
    let pol = policy(SrtpMode::Required, SrtpMode::Required);
    let offer_in = peer_sdp(&c.caller, &[(1, c.k1.0, &c.k1.1)], true);
    let out = e
        .offer(
            call,
            &TenantId::from("t1"),
            LegSide::Caller,
            &offer_in,
            &pol,
        )
        .unwrap();
    let m = &sdp::parse(&out).unwrap().media[0];
    assert_eq!(m.port, c.callee_side_port);
    assert_eq!(m.crypto[0].key.as_ref().unwrap().key, c.k2.1.key);
    let answer_in = peer_sdp(&c.callee, &[(1, c.k3.0, &c.k3.1)], true);
    let out = e.answer(call, LegSide::Callee, &answer_in).unwrap();
    let a = &sdp::parse(&out).unwrap().media[0];
    assert_eq!(a.crypto[0].key.as_ref().unwrap().key, c.k4.1.key);
    let mut replay_ctx = ctx_for(c.k1.0, &c.k1.1);
    send_srtp(&c.caller, &mut replay_ctx, &pkt, c.caller_side_port);
    let s = wait_stats(&e, |s| s.packets_dropped_total >= 1);
    assert!(
        s.dropped_by_reason
            .iter()
            .any(|(r, n)| *r == "replayed" && *n == 1),
        "{s:?}"
    );

    // The caller re-keys: its new key works; the callee direction is untouched.
    let k1b = key(c.k1.0, 0x77);
    let offer_in = peer_sdp(&c.caller, &[(1, c.k1.0, &k1b)], true);
    e.offer(
        call,
        &TenantId::from("t1"),
        LegSide::Caller,
        &offer_in,
        &pol,
    )
    .unwrap();
    e.answer(call, LegSide::Callee, &answer_in).unwrap();
    let mut tx1b = ctx_for(c.k1.0, &k1b);
    let deadline = Instant::now() + PACKET_WAIT;
    let mut seq = 2u16;
    let got = loop {
        // The worker applies the new key asynchronously: retry until it does.
        let p = rtp(seq, 0xA, b"after rekey");
        send_srtp(&c.caller, &mut tx1b, &p, c.caller_side_port);
        c.callee
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Some(mut g) = recv_packet(&c.callee) {
            let n = rx2.unprotect_rtp(&mut g).unwrap();
            g.truncate(n);
            break (g, p);
        }
        assert!(Instant::now() < deadline, "re-keyed media never arrived");
        seq += 1;
    };
    assert_eq!(got.0, got.1);
    c.caller.set_read_timeout(Some(PACKET_WAIT)).unwrap();
    let back = rtp(1, 0xB, b"callee still fine");
    send_srtp(&c.callee, &mut tx3, &back, c.callee_side_port);
    assert_eq!(recv_srtp(&c.caller, &mut rx4), back);
    e.shutdown();
}

#[test]
fn start_refuses_bad_settings() {
    use sbc_media::engine::MediaStartError;
    let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let (min, max) = sbc_testkit::ports::free_udp_range(100);
    let odd = MediaSettings::new(lo, lo, min + 1, max);
    assert!(matches!(
        MediaEngine::start(odd),
        Err(MediaStartError::PortRange(_))
    ));
    let mut zero = MediaSettings::new(lo, lo, min, max);
    zero.workers = 0;
    assert!(matches!(
        MediaEngine::start(zero),
        Err(MediaStartError::Invalid(_))
    ));
    let unspecified = MediaSettings::new(lo, "0.0.0.0".parse().unwrap(), min, max);
    assert!(matches!(
        MediaEngine::start(unspecified),
        Err(MediaStartError::Invalid(_))
    ));
    // TEST-NET-1 is not an address of this host.
    let foreign = MediaSettings::new("192.0.2.1".parse().unwrap(), lo, min, max);
    assert!(matches!(
        MediaEngine::start(foreign),
        Err(MediaStartError::Invalid(_))
    ));
    let ok = MediaEngine::start(MediaSettings::new(lo, lo, min, max)).unwrap();
    let ctl = ok.control();
    assert!(ctl.poll_events().is_empty());
    assert_eq!(
        ok.stats().ports_in_use,
        0,
        "the start-up check frees its pair"
    );
    drop(ctl);
    ok.shutdown();
}

/// Tenant A over its media bandwidth loses its excess packets (counted); tenant B on the
/// same worker loses nothing.
#[test]
fn tenant_bandwidth_limit_drops_only_that_tenants_excess() {
    let e = engine(100, Duration::from_secs(60));
    let mut limited = policy(SrtpMode::Required, SrtpMode::Required);
    // 100 kbit/s = 12,500 bytes/s; the engine in these tests runs 2 workers, so each
    // enforces half; one second deep.
    limited.bandwidth_kbps = 100;
    let a = setup_srtp_call_for(&e, CallRef(1), true, "tenant-a", &limited);
    // CallRef 3 lands on the same worker as CallRef 1 (call % workers).
    let b = setup_srtp_call_for(
        &e,
        CallRef(3),
        true,
        "tenant-b",
        &policy(SrtpMode::Required, SrtpMode::Required),
    );
    let mut a_tx = ctx_for(a.k1.0, &a.k1.1);
    let mut a_rx = ctx_for(a.k2.0, &a.k2.1);
    let mut b_tx = ctx_for(b.k1.0, &b.k1.1);
    let mut b_rx = ctx_for(b.k2.0, &b.k2.1);
    let started = Instant::now();
    let n = 300u16;
    let mut b_got = 0;
    for seq in 1..=n {
        let payload = [seq as u8; 160];
        send_srtp(
            &a.caller,
            &mut a_tx,
            &rtp(seq, 0xA, &payload),
            a.caller_side_port,
        );
        send_srtp(
            &b.caller,
            &mut b_tx,
            &rtp(seq, 0xB, &payload),
            b.caller_side_port,
        );
        // B's packets all arrive, in order, while A floods.
        assert_eq!(
            &recv_srtp(&b.callee, &mut b_rx)[12..],
            &payload[..],
            "tenant B packet {seq}"
        );
        b_got += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    a.callee
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut a_got = 0u64;
    while let Some(mut p) = recv_packet(&a.callee) {
        assert!(a_rx.unprotect_rtp(&mut p).is_ok());
        a_got += 1;
    }
    // Each relayed packet is 12 + 160 + 10 bytes; the worker's share is 6,250 bytes/s with
    // a one-second burst.
    let share = 12_500.0 / 2.0;
    let bound = ((share + share * elapsed) / 182.0).ceil() as u64;
    assert_eq!(b_got, n);
    assert!(
        a_got > 0 && a_got <= bound,
        "tenant A got {a_got}, bound {bound}"
    );
    let s = wait_stats(&e, |s| {
        s.dropped_by_reason
            .iter()
            .any(|(r, c)| *r == "tenant_bandwidth" && *c > 0)
    });
    let dropped = s
        .dropped_by_reason
        .iter()
        .find(|(r, _)| *r == "tenant_bandwidth")
        .map(|(_, c)| *c)
        .unwrap();
    assert_eq!(dropped, u64::from(n) - a_got, "every excess packet counted");
    e.shutdown();
}

#[test]
fn calls_are_spread_over_the_workers_whatever_their_numbers() {
    // The SIP side numbers calls 2, 4, 6, ...: a choice by call number would put them
    // all on one of two workers.
    let e = engine(100, Duration::from_secs(60));
    let _calls: Vec<Call> = [2u64, 4, 6, 8]
        .into_iter()
        .map(|n| setup_srtp_call(&e, CallRef(n), true))
        .collect();
    let s = wait_stats(&e, |s| s.active_streams == 4);
    assert_eq!(s.streams_per_worker, vec![2, 2], "two calls on each worker");
    e.shutdown();
}

/// Sends several batches' worth of packets back to back from the caller and checks that
/// all of them reach the callee, in order, each counted once.
fn relay_burst(e: &MediaEngine, call: CallRef) {
    use std::os::fd::AsFd;
    let before = e.stats();
    let c = setup_srtp_call(e, call, true);
    let mut tx1 = ctx_for(c.k1.0, &c.k1.1);
    let mut rx2 = ctx_for(c.k2.0, &c.k2.1);
    const N: u16 = 4 * sbc_media::udp_batch::BATCH as u16 - 8;
    let sent: Vec<Vec<u8>> = (1..=N)
        .map(|seq| rtp(seq, 0xB0B0, format!("burst {seq}").as_bytes()))
        .collect();
    let protected: Vec<Vec<u8>> = sent
        .iter()
        .map(|pkt| {
            let mut buf = vec![0u8; pkt.len() + 64];
            buf[..pkt.len()].copy_from_slice(pkt);
            let n = tx1.protect_rtp(&mut buf, pkt.len()).unwrap();
            buf.truncate(n);
            buf
        })
        .collect();
    let dest = std::net::SocketAddr::from(([127, 0, 0, 1], c.caller_side_port));
    for chunk in protected.chunks(sbc_media::udp_batch::BATCH) {
        let done = sbc_media::udp_batch::send_batch(
            c.caller.as_fd(),
            chunk.iter().map(|p| (p.as_slice(), dest)),
        );
        assert_eq!(done.failed, 0);
    }
    for pkt in &sent {
        assert_eq!(&recv_srtp(&c.callee, &mut rx2), pkt);
    }
    let s = wait_stats(e, |s| {
        s.packets_relayed >= before.packets_relayed + u64::from(N)
    });
    assert_eq!(
        (
            s.packets_relayed - before.packets_relayed,
            s.packets_dropped_total - before.packets_dropped_total
        ),
        (u64::from(N), 0)
    );
    let [caller, callee] = e.counters(call).unwrap();
    assert_eq!(
        (
            caller.packets_received,
            caller.packets_lost,
            callee.packets_sent
        ),
        (u64::from(N), 0, u64::from(N))
    );
}

#[test]
fn a_burst_larger_than_a_batch_is_relayed_whole_and_in_order() {
    // Several batches queue on the caller-facing socket before the worker reads: all
    // of them must go out (a worker that read one batch per readiness event would strand
    // the rest until the next packet), in order, and count once each.
    let e = engine(100, Duration::from_secs(60));
    relay_burst(&e, CallRef(10));
    e.shutdown();
}

#[test]
fn a_paced_worker_relays_everything_too() {
    // With `batch_interval` a worker that found packets sleeps before looking again: the
    // packets that arrive meanwhile are all relayed on the next look, and a packet after
    // silence still gets through (the worker went back to blocking in epoll).
    let lo = "127.0.0.1".parse().unwrap();
    let free = sbc_testkit::ports::free_udp_range(100);
    let mut settings = MediaSettings::new(lo, lo, free.0, free.1);
    settings.workers = 1;
    settings.batch_interval = Duration::from_millis(2);
    let e = MediaEngine::start(settings).unwrap();
    relay_burst(&e, CallRef(12));
    std::thread::sleep(Duration::from_millis(50));
    relay_burst(&e, CallRef(14));
    e.shutdown();
}

/// `publish_gauges`: ports in use against the pool's size, and streams per tenant, back
/// to 0 when the tenant's last call ends.
#[test]
fn usage_gauges_follow_ports_and_tenant_streams() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let e = engine(100, Duration::from_secs(60));
    let (t, other) = (TenantId::from("acme"), TenantId::from("globex"));
    let pol = policy(SrtpMode::Required, SrtpMode::Required);
    let caller = peer();
    let k = key(SrtpProfile::AesCm128HmacSha1_80, 7);
    let offer = peer_sdp(&caller, &[(1, SrtpProfile::AesCm128HmacSha1_80, &k)], true);
    e.offer(CallRef(1), &t, LegSide::Caller, &offer, &pol)
        .unwrap();
    e.offer(CallRef(2), &t, LegSide::Caller, &offer, &pol)
        .unwrap();
    e.offer(CallRef(3), &other, LegSide::Caller, &offer, &pol)
        .unwrap();
    let gauges = |e: &MediaEngine| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || e.publish_gauges());
        let mut out: Vec<(String, f64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| {
                let label: Vec<String> = k.key().labels().map(|l| l.value().to_string()).collect();
                let DebugValue::Gauge(g) = v else {
                    panic!("not a gauge")
                };
                (format!("{}{label:?}", k.key().name()), g.into_inner())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let g = |v: &[(String, f64)], name: &str| v.iter().find(|(n, _)| n == name).map(|x| x.1);
    let now = gauges(&e);
    // Three calls, one stream each, two ports per leg: 12 of the range's 100.
    assert_eq!(g(&now, "sbc_media_ports_in_use[]"), Some(12.0));
    assert_eq!(g(&now, "sbc_media_ports_capacity[]"), Some(100.0));
    assert_eq!(g(&now, "sbc_tenant_media_streams[\"acme\"]"), Some(2.0));
    assert_eq!(g(&now, "sbc_tenant_media_streams[\"globex\"]"), Some(1.0));
    e.delete(CallRef(3));
    let now = gauges(&e);
    assert_eq!(g(&now, "sbc_media_ports_in_use[]"), Some(8.0));
    assert_eq!(g(&now, "sbc_tenant_media_streams[\"globex\"]"), Some(0.0));
    assert_eq!(g(&now, "sbc_tenant_media_streams[\"acme\"]"), Some(2.0));
}
