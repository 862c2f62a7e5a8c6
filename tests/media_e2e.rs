//! Media anchoring end to end: SIP over TLS with SDES offers through the real gateway and
//! its media relay, then SRTP over real UDP both ways. Each side sees only the gateway's
//! address and ports and the keys the gateway gave it; payloads arrive intact. An offer
//! with no acceptable suite is answered 488.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use sbc_core::registry::{CallRegistry, DrainState, LegDirection, MediaCounters};
use sbc_media::engine::{MediaEngine, MediaSettings};
use sbc_media::srtp::SrtpProfile;
use sbc_sip::message::Method;
use sbc_sip::server::Hooks;
use sbc_testkit::media::{self, ctx, parse_sdp, recv_srtp, rtp, send_srtp, with_sdp, Sdp};
use sbc_testkit::*;

fn material(profile: SrtpProfile, fill: u8) -> Vec<u8> {
    (0..profile.master_key_len() + profile.master_salt_len())
        .map(|i| fill.wrapping_add(i as u8))
        .collect()
}

/// An SDP from a peer with media at `port`, the given crypto lines, and an inside address
/// in `o=`/`c=` only when `addr` says so.
fn peer_sdp(addr: &str, port: u16, crypto: &[(u32, &str, &[u8])]) -> String {
    crypto
        .iter()
        .fold(
            Sdp::audio(port).addr(addr).telephone_event(false).ptime(),
            |sdp, (tag, suite, key)| sdp.crypto(*tag, suite, key),
        )
        .build()
}

/// The RTP SSRC of both peers.
const SSRC: u32 = 0x1234_5678;

async fn gateway(
    world: &World,
    callee: &Callee,
    ports: (u16, u16),
) -> (sbc_sip::server::ServerHandle, MediaEngine) {
    gateway_with(world, callee, ports, 60).await
}

async fn gateway_with(
    world: &World,
    callee: &Callee,
    ports: (u16, u16),
    timeout_secs: u64,
) -> (sbc_sip::server::ServerHandle, MediaEngine) {
    gateway_limits(world, callee, ports, timeout_secs, "").await
}

async fn gateway_hooks(
    world: &World,
    callee: &Callee,
    ports: (u16, u16),
    registry: Option<Arc<CallRegistry>>,
) -> (sbc_sip::server::ServerHandle, MediaEngine) {
    gateway_full(world, callee, ports, 60, "", registry).await
}

async fn gateway_limits(
    world: &World,
    callee: &Callee,
    ports: (u16, u16),
    timeout_secs: u64,
    limits: &str,
) -> (sbc_sip::server::ServerHandle, MediaEngine) {
    gateway_full(world, callee, ports, timeout_secs, limits, None).await
}

async fn gateway_full(
    world: &World,
    callee: &Callee,
    ports: (u16, u16),
    timeout_secs: u64,
    limits: &str,
    registry: Option<Arc<CallRegistry>>,
) -> (sbc_sip::server::ServerHandle, MediaEngine) {
    let tenant = world
        .tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr)
        .replace(
            "[[tenants.routes]]",
            &format!("[tenants.limits]\n{limits}\n[[tenants.routes]]"),
        );
    let text = format!(
        "[media]\nport_min = {}\nport_max = {}\ntimeout_secs = {timeout_secs}\n{}\n{}",
        ports.0,
        ports.1,
        world.listener(""),
        tenant
    );
    let cfg = Arc::new(world.config(&text));
    let lo = "127.0.0.1".parse().unwrap();
    let mut settings = MediaSettings::new(lo, lo, cfg.media.port_min, cfg.media.port_max);
    settings.workers = 1;
    settings.media_timeout = cfg.media.timeout;
    let engine = MediaEngine::start(settings).unwrap();
    let gw = sbc_sip::server::start_with(
        cfg,
        Hooks {
            media: Some(engine.control()),
            drain: registry.as_ref().map(|_| Arc::new(DrainState::new())),
            registry,
            cluster: None,
            recording: None,
            audit: None,
            replica: None,
            media_takeover: None,
        },
    )
    .await
    .unwrap();
    (gw, engine)
}

#[tokio::test]
async fn srtp_call_is_anchored_rekeyed_and_relayed_both_ways() {
    let world = World::new("media-e2e");
    let callee = Callee::new(&world.callee_leaf).await;
    let registry = Arc::new(CallRegistry::new());
    let ports = sbc_testkit::ports::free_udp_range(100);
    let (gw, engine) = gateway_hooks(&world, &callee, ports, Some(registry.clone())).await;

    let caller_rtp = media::peer();
    let callee_rtp = media::peer();
    let caller_port = caller_rtp.local_addr().unwrap().port();
    let callee_port = callee_rtp.local_addr().unwrap().port();

    // Caller offers AES_CM_128_HMAC_SHA1_80 with key K1, from an "inside" o= address.
    let k1 = material("AES_CM_128_HMAC_SHA1_80".parse().unwrap(), 1);
    let offer = peer_sdp(
        "127.0.0.1",
        caller_port,
        &[(1, "AES_CM_128_HMAC_SHA1_80", &k1)],
    );
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&with_sdp(
            invite("+15551234", "media-1@platform", "z9hG4bKm1", "atag"),
            &offer,
        ))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    let offered = parse_sdp(inv.body());
    let (addr, gw_callee_port, offered) = (offered.addr, offered.port, offered.crypto);
    assert_eq!(addr, "127.0.0.1");
    assert_ne!(
        gw_callee_port, caller_port,
        "the callee sees the gateway's port, not the caller's"
    );
    assert!((ports.0..=ports.1).contains(&gw_callee_port));
    assert!(!offered.is_empty());
    assert!(
        offered.iter().all(|(_, _, k)| k != &k1),
        "fresh keys, never the caller's"
    );
    // The callee picks the first offered suite, with its own key K3.
    let (tag, suite2, k2) = offered[0].clone();
    let k3 = material(suite2.parse().unwrap(), 3);
    let answer_sdp = peer_sdp("127.0.0.1", callee_port, &[(tag, &suite2, &k3)]);
    c.send(&with_sdp(answer(&inv, 200, "btag"), &answer_sdp))
        .await;
    let ok = caller.recv_where(|m| m.status() == Some(200)).await;
    let answered = parse_sdp(ok.body());
    let (addr, gw_caller_port, answered) = (answered.addr, answered.port, answered.crypto);
    assert_eq!(addr, "127.0.0.1");
    assert_ne!(gw_caller_port, callee_port);
    assert_eq!(
        answered.len(),
        1,
        "an answer carries exactly one crypto line"
    );
    let (atag, suite1, k4) = answered[0].clone();
    assert_eq!((atag, suite1.as_str()), (1, "AES_CM_128_HMAC_SHA1_80"));
    assert_ne!(
        k4, k3,
        "the caller gets the gateway's key, not the callee's"
    );

    // Caller → callee: protect with K1, the callee unprotects with K2.
    let mut tx_a = ctx("AES_CM_128_HMAC_SHA1_80", &k1);
    let mut rx_b = ctx(&suite2, &k2);
    for seq in 1..=20u16 {
        let payload = vec![seq as u8; 160];
        send_srtp(
            &caller_rtp,
            &mut tx_a,
            &rtp(seq, SSRC, &payload),
            gw_caller_port,
        );
        assert_eq!(
            recv_srtp(&callee_rtp, &mut rx_b)[12..],
            payload,
            "packet {seq} caller→callee"
        );
    }
    // Callee → caller: protect with K3, the caller unprotects with K4. The callee's
    // sequence numbers skip 11 and 12: two packets lost before they reached us.
    let mut tx_b = ctx(&suite2, &k3);
    let mut rx_a = ctx("AES_CM_128_HMAC_SHA1_80", &k4);
    for seq in (1..=10u16).chain(13..=22) {
        let payload = vec![0xA0 ^ seq as u8; 160];
        send_srtp(
            &callee_rtp,
            &mut tx_b,
            &rtp(seq, SSRC, &payload),
            gw_callee_port,
        );
        assert_eq!(
            recv_srtp(&caller_rtp, &mut rx_a)[12..],
            payload,
            "packet {seq} callee→caller"
        );
    }
    // The worker counts a packet just after sending it: give the last count a moment.
    for _ in 0..50 {
        if engine.stats().packets_relayed == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = engine.stats();
    assert_eq!(stats.packets_relayed, 40);
    assert_eq!(stats.packets_dropped_total, 0);
    assert_eq!(stats.active_calls, 1);

    // Per-call counters reach the registry (what `GET /v1/calls` shows).
    registry.refresh_media_counters(engine.control().as_ref());
    let calls = registry.snapshot(None);
    assert_eq!(calls.len(), 1);
    let legs: Vec<(LegDirection, MediaCounters)> = calls[0]
        .legs
        .iter()
        .map(|l| (l.direction, l.counters))
        .collect();
    let counters = |received, sent, lost| MediaCounters {
        packets_received: received,
        packets_sent: sent,
        packets_lost: lost,
    };
    assert_eq!(
        legs,
        vec![
            (LegDirection::Inbound, counters(20, 20, 0)),
            (LegDirection::Outbound, counters(20, 20, 2)),
        ],
        "caller's leg: 20 in, 20 out; callee's leg: 20 in with a gap of 2, 20 out"
    );

    // BYE ends the call and frees its ports.
    let to = ok.header("to").unwrap().to_string();
    let bye = in_dialog(
        "BYE",
        "sips:sbc@127.0.0.1",
        "z9hG4bKm1bye",
        "\"Alice\" <sips:alice@platform.example>;tag=atag",
        &to,
        "media-1@platform",
        2,
    );
    caller.send(&bye).await;
    let out_bye = c.recv_where(|m| m.method() == Some(&Method::Bye)).await;
    c.send(&answer(&out_bye, 200, "btag")).await;
    caller.recv_where(|m| m.status() == Some(200)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.stats().active_calls, 0);
    assert_eq!(engine.stats().ports_in_use, 0);
    gw.shutdown().await;
    engine.shutdown();
}

#[tokio::test]
async fn offer_without_acceptable_srtp_gets_488_and_is_not_forwarded() {
    let world = World::new("media-488");
    let callee = Callee::new(&world.callee_leaf).await;
    let (gw, engine) = gateway(&world, &callee, sbc_testkit::ports::free_udp_range(100)).await;
    // Plain RTP to a tenant whose caller leg requires SRTP (the default policy).
    let plain = "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&with_sdp(
            invite("+15551234", "media-2@platform", "z9hG4bKm2", "atag"),
            plain,
        ))
        .await;
    let r = caller
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(r.status(), Some(488));
    assert!(r.header("warning").unwrap().contains("not acceptable"));
    assert!(
        callee
            .no_connection_within(Duration::from_millis(300))
            .await,
        "nothing forwarded"
    );
    assert_eq!(gw.stats().active_calls, 0);
    assert_eq!(engine.stats().ports_in_use, 0);
    gw.shutdown().await;
    engine.shutdown();
}

#[tokio::test]
async fn media_timeout_ends_the_call_with_bye_on_both_legs() {
    let world = World::new("media-timeout");
    let callee = Callee::new(&world.callee_leaf).await;
    let (gw, engine) =
        gateway_with(&world, &callee, sbc_testkit::ports::free_udp_range(100), 1).await;
    let k1 = material("AES_CM_128_HMAC_SHA1_80".parse().unwrap(), 1);
    let offer = peer_sdp("127.0.0.1", 4000, &[(1, "AES_CM_128_HMAC_SHA1_80", &k1)]);
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&with_sdp(
            invite("+15551234", "media-3@platform", "z9hG4bKm3", "atag"),
            &offer,
        ))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    let offered = parse_sdp(inv.body()).crypto;
    let (tag, suite, _) = offered[0].clone();
    let k3 = material(suite.parse().unwrap(), 3);
    c.send(&with_sdp(
        answer(&inv, 200, "btag"),
        &peer_sdp("127.0.0.1", 4002, &[(tag, &suite, &k3)]),
    ))
    .await;
    let ok = caller.recv_where(|m| m.status() == Some(200)).await;
    let to = ok.header("to").unwrap().to_string();
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@127.0.0.1",
            "z9hG4bKm3ack",
            "\"Alice\" <sips:alice@platform.example>;tag=atag",
            &to,
            "media-3@platform",
            1,
        ))
        .await;
    // No media at all: after the 1 s timeout both legs get a BYE from the gateway.
    let bye_a = caller
        .recv_where(|m| m.method() == Some(&Method::Bye))
        .await;
    let bye_b = c.recv_where(|m| m.method() == Some(&Method::Bye)).await;
    assert_eq!(bye_a.call_id(), Some("media-3@platform"));
    assert!(bye_b.header("reason").unwrap().contains("media timeout"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.stats().active_calls, 0);
    assert_eq!(engine.stats().ports_in_use, 0);
    gw.shutdown().await;
    engine.shutdown();
}

#[tokio::test]
async fn an_answer_media_cannot_take_is_hung_up_and_refused() {
    let world = World::new("media-bad-answer");
    let callee = Callee::new(&world.callee_leaf).await;
    let (gw, engine) = gateway(&world, &callee, sbc_testkit::ports::free_udp_range(100)).await;
    let k1 = material("AES_CM_128_HMAC_SHA1_80".parse().unwrap(), 1);
    let offer = peer_sdp("127.0.0.1", 4000, &[(1, "AES_CM_128_HMAC_SHA1_80", &k1)]);
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&with_sdp(
            invite("+15551234", "media-4@platform", "z9hG4bKm4", "atag"),
            &offer,
        ))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    // The callee answers with a tag the gateway never offered.
    let k3 = material("AES_CM_128_HMAC_SHA1_80".parse().unwrap(), 3);
    let bad = peer_sdp("127.0.0.1", 4002, &[(99, "AES_CM_128_HMAC_SHA1_80", &k3)]);
    c.send(&with_sdp(answer(&inv, 200, "btag"), &bad)).await;
    let r = caller
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(
        r.status(),
        Some(488),
        "refused upstream, never a 200 without media"
    );
    c.recv_where(|m| m.method() == Some(&Method::Ack)).await;
    let bye = c.recv_where(|m| m.method() == Some(&Method::Bye)).await;
    assert_eq!(bye.call_id(), inv.call_id());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.stats().active_calls, 0);
    assert_eq!(engine.stats().ports_in_use, 0);
    gw.shutdown().await;
    engine.shutdown();
}

#[tokio::test]
async fn tenant_media_stream_limit_refuses_the_next_call_with_503() {
    let world = World::new("media-streams");
    let callee = Callee::new(&world.callee_leaf).await;
    let (gw, engine) = gateway_limits(
        &world,
        &callee,
        sbc_testkit::ports::free_udp_range(100),
        60,
        "max_media_streams = 1",
    )
    .await;
    let k1 = material("AES_CM_128_HMAC_SHA1_80".parse().unwrap(), 1);
    let offer = peer_sdp("127.0.0.1", 4000, &[(1, "AES_CM_128_HMAC_SHA1_80", &k1)]);
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&with_sdp(
            invite("+15551234", "media-5@platform", "z9hG4bKm5", "atag"),
            &offer,
        ))
        .await;
    let mut c = callee.accept().await;
    let _first = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    // The tenant's one stream is in use: the next call is refused before it is forwarded.
    caller
        .send(&with_sdp(
            invite("+15551234", "media-6@platform", "z9hG4bKm6", "atag"),
            &offer,
        ))
        .await;
    let r = caller
        .recv_where(|m| {
            m.call_id() == Some("media-6@platform") && m.status().is_some_and(|s| s >= 200)
        })
        .await;
    assert_eq!(r.status(), Some(503));
    assert!(
        r.header("warning").unwrap().contains("media stream limit"),
        "{:?}",
        r.header("warning")
    );
    assert_eq!(engine.stats().active_calls, 1);
    gw.shutdown().await;
    engine.shutdown();
}
