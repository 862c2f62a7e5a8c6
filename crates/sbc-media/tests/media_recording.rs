//! Recorded streams (SIPREC, `sbc_core::recording::RecordingMedia`) end to end on
//! loopback: an SRTP call through a real engine, one fork per leg prepared before the
//! callee answers, recorder sockets standing in for the SRS that decrypt the forks under
//! the keys `prepare_stream` handed out. Pause, resume across a sequence-number wrap,
//! moving the destination, release, and the call's end releasing what was only prepared.
#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sbc_core::media::{CallRef, LegSide, MediaControl};
use sbc_core::recording::{PreparedStream, RecordingMedia, RtpFormat};
use sbc_core::tap::{TapControl, TapError, TapLegs, TapSpec, TapStatus, TapSuite, TapTransport};
use sbc_core::tenant::TenantId;
use sbc_media::engine::MediaEngine;
use sbc_media::relay::{MAX_RECORDED_STREAMS_PER_CALL, MAX_TAPS_PER_CALL};
use sbc_media::srtp::{MasterKey, SrtpContext, SrtpProfile};
use sbc_testkit::media::*;

const P128: SrtpProfile = SrtpProfile::AesCm128HmacSha1_80;
const CALLER_SSRC: u32 = 0x1111_1111;
const CALLEE_SSRC: u32 = 0x2222_2222;
const SRTP128: TapTransport = TapTransport::Srtp(TapSuite::AesCm128HmacSha1_80);

fn format(pt: u8, name: &str, fmtp: Option<&str>) -> RtpFormat {
    RtpFormat {
        payload_type: pt,
        encoding: name.to_string(),
        clock_rate: 8000,
        channels: None,
        fmtp: fmtp.map(str::to_string),
    }
}

/// The call of these tests: the caller offers PCMU and telephone-event (with fmtp), so
/// recorded streams can be prepared between the offer and the callee's PCMU answer.
fn offer(e: &MediaEngine, id: CallRef) -> SrtpCall {
    SrtpCall::offer(e, id, "t1", &srtp_call_policy(0), true)
}

/// The recorder's receiving context for a prepared SRTP stream's key.
fn recorder_ctx(p: &PreparedStream, profile: SrtpProfile) -> SrtpContext {
    let inline = p.key.as_ref().expect("an SRTP stream has a key").expose();
    let material = base64::engine::general_purpose::STANDARD
        .decode(inline.strip_prefix("inline:").expect("inline form"))
        .unwrap();
    ctx_for(
        profile,
        &MasterKey::from_concatenated(profile, &material).unwrap(),
    )
}

fn recv_decrypted(sock: &UdpSocket, ctx: &mut SrtpContext) -> Vec<u8> {
    let mut p = recv_packet(sock).expect("a recorded copy");
    let n = ctx
        .unprotect_rtp(&mut p)
        .expect("decrypts under the stream key");
    p.truncate(n);
    p
}

fn quiet(sock: &UdpSocket) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let none = recv_packet(sock).is_none();
    sock.set_read_timeout(Some(PACKET_WAIT)).unwrap();
    none
}

/// The recorded streams' status once their counters reach `sent` copies each (or at the
/// deadline).
fn recorded(e: &MediaEngine, call: CallRef, sent: u64) -> Vec<TapStatus> {
    let deadline = Instant::now() + PACKET_WAIT;
    loop {
        let l: Vec<TapStatus> = e
            .list_taps(call)
            .into_iter()
            .filter(|t| t.recording)
            .collect();
        if l.iter().all(|t| t.packets_sent >= sent) || Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn both_legs_recorded_from_before_the_answer_under_their_own_keys() {
    let e = engine(100, Duration::from_secs(30));
    let mut c = offer(&e, CallRef(1));
    let (rec_a, rec_b) = (peer(), peer());

    // Offer processed, no answer yet: both legs can be prepared and started.
    let a = e.prepare_stream(c.id, LegSide::Caller, SRTP128).unwrap();
    let b = e
        .prepare_stream(c.id, LegSide::Callee, TapTransport::Rtp)
        .unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.local.ip(), e.settings().advertised_address);
    assert_ne!(a.local.port(), 0);
    assert!(b.key.is_none(), "plain RTP: no key");
    assert!(!format!("{a:?}").contains(a.key.as_ref().unwrap().expose()));
    let offered = vec![
        format(0, "PCMU", None),
        format(101, "telephone-event", Some("0-16")),
    ];
    assert_eq!(a.formats, offered);
    // The callee has not answered: it can only send what the offer listed.
    assert_eq!(b.formats, offered);
    assert!(
        e.list_taps(c.id).is_empty(),
        "prepared streams are not listed"
    );
    e.start_stream(a.id, rec_a.local_addr().unwrap()).unwrap();
    e.start_stream(b.id, rec_b.local_addr().unwrap()).unwrap();

    c.answer(&e);
    // After the answer, a callee stream names the callee's answered formats.
    let later = e.prepare_stream(c.id, LegSide::Callee, SRTP128).unwrap();
    assert_eq!(later.formats, vec![format(0, "PCMU", None)]);
    assert!(e.release_stream(later.id));

    let mut ctx_a = recorder_ctx(&a, P128);
    const N: u16 = 20;
    for seq in 1..=N {
        let pa = rtp(seq, CALLER_SSRC, format!("caller says {seq}").as_bytes());
        let pb = rtp(seq, CALLEE_SSRC, format!("callee says {seq}").as_bytes());
        assert_eq!(c.caller_to_callee(&pa), pa, "relayed");
        assert_eq!(c.callee_to_caller(&pb), pb, "relayed");
        let got = recv_packet(&rec_a).expect("a caller fork");
        assert_ne!(got[12..], pa[12..], "the SRTP fork is encrypted");
        let mut got = got;
        let n = ctx_a.unprotect_rtp(&mut got).unwrap();
        assert_eq!(
            &got[..n],
            &pa[..],
            "caller fork decrypts to what the caller sent"
        );
        assert_eq!(
            recv_packet(&rec_b).expect("a callee fork"),
            pb,
            "plain fork is the callee's packet byte for byte"
        );
    }
    assert!(
        quiet(&rec_a) && quiet(&rec_b),
        "one fork per packet, one leg each"
    );

    let st = recorded(&e, c.id, u64::from(N));
    assert_eq!(st.len(), 2);
    for t in &st {
        assert_eq!(
            (t.packets_sent, t.packets_dropped),
            (u64::from(N), 0),
            "{t:?}"
        );
        assert!(!t.paused);
    }
    let sa = st.iter().find(|t| t.id == a.id).unwrap();
    assert_eq!(sa.legs, TapLegs::Caller);
    assert_eq!(sa.destination, rec_a.local_addr().unwrap());
    assert_eq!(e.tap_owner(a.id).unwrap().tenant, TenantId::from("t1"));
    // The recording client owns them: `stop_tap` does not touch them.
    assert!(!e.stop_tap(a.id));
    e.delete(c.id);
    assert!(e.list_taps(c.id).is_empty());
    assert!(!e.release_stream(a.id), "ended with the call");
    e.shutdown();
}

#[test]
fn pause_resume_across_a_wrap_then_move_then_release() {
    let e = engine(100, Duration::from_secs(30));
    let mut c = offer(&e, CallRef(2));
    c.answer(&e);
    let (rec1, rec2) = (peer(), peer());
    let p = e.prepare_stream(c.id, LegSide::Caller, SRTP128).unwrap();
    e.start_stream(p.id, rec1.local_addr().unwrap()).unwrap();
    let mut ctx = recorder_ctx(&p, P128);
    let pkt = |seq: u16| rtp(seq, CALLER_SSRC, format!("voice {seq}").as_bytes());

    for seq in 65_530..=65_532u16 {
        assert_eq!(c.caller_to_callee(&pkt(seq)), pkt(seq), "relayed");
        assert_eq!(recv_decrypted(&rec1, &mut ctx), pkt(seq));
    }
    // Paused across the wrap: the call goes on, nothing is forked or counted.
    assert!(e.pause_stream(p.id, true));
    let sent = recorded(&e, c.id, 3)[0].packets_sent;
    assert_eq!(sent, 3);
    for seq in (65_533..=65_535u16).chain(0..=2) {
        assert_eq!(c.caller_to_callee(&pkt(seq)), pkt(seq), "relayed");
    }
    assert!(quiet(&rec1), "nothing while paused");
    let st = e.list_taps(c.id);
    assert!(st[0].paused);
    assert_eq!((st[0].packets_sent, st[0].packets_dropped), (3, 0));

    // Resumed past the wrap: the fork's rollover counter follows, the recorder decrypts.
    assert!(e.pause_stream(p.id, false));
    for seq in 3..=5u16 {
        assert_eq!(c.caller_to_callee(&pkt(seq)), pkt(seq), "relayed");
        assert_eq!(recv_decrypted(&rec1, &mut ctx), pkt(seq));
    }
    assert!(!e.list_taps(c.id)[0].paused);

    // Moved (SRS re-INVITE): same stream, same SRTP state, new address.
    e.start_stream(p.id, rec2.local_addr().unwrap()).unwrap();
    for seq in 6..=8u16 {
        assert_eq!(c.caller_to_callee(&pkt(seq)), pkt(seq), "relayed");
        assert_eq!(recv_decrypted(&rec2, &mut ctx), pkt(seq));
    }
    assert!(quiet(&rec1), "nothing to the old address");
    assert_eq!(e.list_taps(c.id)[0].destination, rec2.local_addr().unwrap());

    // Released: no copies, the call goes on.
    assert!(e.release_stream(p.id));
    assert!(!e.release_stream(p.id));
    assert!(!e.pause_stream(p.id, true));
    assert_eq!(c.caller_to_callee(&pkt(9)), pkt(9), "relayed");
    assert!(quiet(&rec2), "nothing after release");
    assert!(e.list_taps(c.id).is_empty());
    e.delete(c.id);
    e.shutdown();
}

#[test]
fn limits_refusals_and_the_call_end_releasing_prepared_streams() {
    let e = engine(100, Duration::from_secs(30));
    assert_eq!(
        e.prepare_stream(CallRef(99), LegSide::Caller, SRTP128)
            .unwrap_err(),
        TapError::UnknownCall(CallRef(99))
    );
    assert!(matches!(
        e.start_stream(sbc_core::tap::TapId(7), "127.0.0.1:4000".parse().unwrap()),
        Err(TapError::Invalid(_))
    ));
    assert!(!e.pause_stream(sbc_core::tap::TapId(7), true));
    assert!(!e.release_stream(sbc_core::tap::TapId(7)));

    let mut c = offer(&e, CallRef(3));
    let mut prepared = Vec::new();
    for i in 0..MAX_RECORDED_STREAMS_PER_CALL {
        let leg = if i % 2 == 0 {
            LegSide::Caller
        } else {
            LegSide::Callee
        };
        prepared.push(e.prepare_stream(c.id, leg, SRTP128).unwrap());
    }
    assert_eq!(
        e.prepare_stream(c.id, LegSide::Caller, SRTP128)
            .unwrap_err(),
        TapError::TooMany {
            max: MAX_RECORDED_STREAMS_PER_CALL
        }
    );
    let p = &prepared[0];
    for bad in [
        "127.0.0.1:0",
        "0.0.0.0:4000",
        "224.0.0.1:4000",
        "[::1]:4000",
    ] {
        assert!(
            matches!(
                e.start_stream(p.id, bad.parse().unwrap()),
                Err(TapError::Invalid(_))
            ),
            "{bad}"
        );
    }
    // Ordinary taps have their own bound, untouched by recorded streams.
    c.answer(&e);
    let rec = peer();
    let spec = TapSpec {
        legs: TapLegs::Both,
        transport: TapTransport::Rtp,
        destination: rec.local_addr().unwrap(),
    };
    for _ in 0..MAX_TAPS_PER_CALL {
        let t = e.start_tap(c.id, spec).unwrap();
        assert!(!e.release_stream(t.id), "a tap is not a recorded stream");
        assert!(!e.pause_stream(t.id, true));
    }
    assert!(e.list_taps(c.id).iter().all(|t| !t.recording));

    // The prepared sockets are held until the call ends, then closed.
    let ports: Vec<u16> = prepared.iter().map(|p| p.local.port()).collect();
    for port in &ports {
        assert!(UdpSocket::bind(("127.0.0.1", *port)).is_err(), "held");
    }
    e.delete(c.id);
    for port in &ports {
        assert!(UdpSocket::bind(("127.0.0.1", *port)).is_ok(), "released");
    }
    for p in &prepared {
        assert!(!e.release_stream(p.id));
        assert!(e.start_stream(p.id, rec.local_addr().unwrap()).is_err());
    }
    e.shutdown();
}

#[test]
fn stream_formats_follow_a_re_offer() {
    let e = engine(100, Duration::from_secs(30));
    let mut c = offer(&e, CallRef(4));
    c.answer(&e);
    let a = e.prepare_stream(c.id, LegSide::Caller, SRTP128).unwrap();
    let b = e.prepare_stream(c.id, LegSide::Callee, SRTP128).unwrap();
    assert_eq!(
        e.stream_formats(a.id),
        Some(vec![
            format(0, "PCMU", None),
            format(101, "telephone-event", Some("0-16")),
        ])
    );
    assert_eq!(e.stream_formats(b.id), Some(vec![format(0, "PCMU", None)]));
    // The caller re-offers G.722 on the same port and key (a re-INVITE changing codec).
    let g722 = String::from_utf8(srtp_call_sdp(&c.caller, &c.caller_key, true))
        .unwrap()
        .replace(" 0 101\r\n", " 9\r\n")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:9 G722/8000")
        .replace(
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
            "",
        );
    e.offer(
        c.id,
        &TenantId::from("t1"),
        LegSide::Caller,
        g722.as_bytes(),
        &srtp_call_policy(0),
    )
    .unwrap();
    assert_eq!(
        e.stream_formats(a.id),
        Some(vec![format(9, "G722", None)]),
        "the caller's stream names what the re-offer lists"
    );
    assert!(e.release_stream(a.id));
    assert_eq!(e.stream_formats(a.id), None, "released: unknown");
}
