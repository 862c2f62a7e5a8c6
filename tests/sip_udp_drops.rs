//! Bad datagrams on a UDP listener (one test per binary: the metrics recorder is
//! process-global): what is not SIP is dropped and counted, never answered; a request too
//! broken to serve is answered 400 only when the answer is no larger than the request
//! (a forged source must not make the gateway an amplifier), and so is the 403 the core
//! gives a source no tenant claims.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use sbc_testkit::process::eventually;
use sbc_testkit::*;

fn counter(snap: &metrics_util::debugging::Snapshotter, reason: &str) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == "sbc_sip_udp_dropped_total"
                && k.key()
                    .labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn non_sip_datagrams_are_dropped_counted_and_never_amplified() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().expect("recorder installs once");

    let world = World::new("udp-drops");
    let text = format!(
        "{}\n{}\n[[tenants]]\nid = \"demo\"\n[tenants.recognition]\nsource_cidrs = [\"10.0.0.0/8\"]\n[[tenants.routes]]\nprefix = \"\"\ntarget = \"sip:127.0.0.1:9;transport=udp\"\n",
        world.listener(""),
        world.plain_listener("inside", "udp"),
    );
    let gw = start_gateway(world.config(&text)).await;
    let gw_udp = gw.sip_addrs[1];
    let peer = UdpPeer::new().await;

    // Not SIP at all (a TLS ClientHello's first bytes, then junk): dropped, counted.
    peer.send_raw_to(
        gw_udp,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not sip",
    )
    .await;
    peer.send_raw_to(gw_udp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        peer.recv_raw_within(Duration::from_millis(500))
            .await
            .is_none(),
        "nothing answered to a datagram that is not SIP"
    );
    assert!(
        eventually(Duration::from_secs(2), async || counter(&snap, "not_sip")
            == 2)
        .await
    );

    // A CRLF keep-alive is neither answered nor counted as a drop.
    peer.send_raw_to(gw_udp, b"\r\n\r\n").await;

    // A broken request padded with a header no answer echoes: 400, smaller than it.
    let padded = format!(
        "OPTIONS sip:sbc SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKp1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: p1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: banana\r\nSubject: {}\r\n\r\n",
        "x".repeat(800)
    );
    peer.send_raw_to(gw_udp, padded.as_bytes()).await;
    let (answer, from) = peer
        .recv_raw_within(Duration::from_secs(2))
        .await
        .expect("a broken request is answered");
    assert_eq!(from, gw_udp);
    assert!(String::from_utf8_lossy(&answer).starts_with("SIP/2.0 400"));
    assert!(
        answer.len() <= padded.len(),
        "answer no larger than the request"
    );

    // The same broken request without padding: its 400 would be larger, so dropped.
    // (167 bytes; the 400 echoes its Via, From, To, Call-ID and CSeq and adds a tag.)
    let bare = "OPTIONS sip:sbc SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKp2\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: p2\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: banana\r\n\r\n";
    peer.send_raw_to(gw_udp, bare.as_bytes()).await;
    let before = dropped_as_too_large(&peer, &snap, 0).await;

    // A well-formed request from a source no tenant claims (this peer: the tenant owns
    // 10.0.0.0/8) gets the core's 403, but only when it is no larger than the request.
    let padded = options("z9hG4bKo1", 600);
    peer.send_raw_to(gw_udp, padded.as_bytes()).await;
    let (answer, _) = peer
        .recv_raw_within(Duration::from_secs(2))
        .await
        .expect("an unrecognised source gets its 403");
    assert!(String::from_utf8_lossy(&answer).starts_with("SIP/2.0 403"));
    assert!(answer.len() <= padded.len());
    let tiny = options("z9hG4bKo2", 0);
    peer.send_raw_to(gw_udp, tiny.as_bytes()).await;
    dropped_as_too_large(&peer, &snap, before).await;
    assert_eq!(
        counter(&snap, "not_sip"),
        2,
        "the keep-alive was not counted"
    );
    gw.shutdown().await;
}

/// An OPTIONS padded by a Subject of `pad` bytes (no answer echoes it).
fn options(branch: &str, pad: usize) -> String {
    let subject = if pad > 0 {
        format!("Subject: {}\r\n", "x".repeat(pad))
    } else {
        String::new()
    };
    format!(
        "OPTIONS sip:s SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch={branch}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n{subject}\r\n"
    )
}

/// Nothing comes back within 700 ms, and `answer_too_large` goes from `before` to
/// `before + 1` (its answer would have been larger than the request). Returns it.
async fn dropped_as_too_large(
    peer: &UdpPeer,
    snap: &metrics_util::debugging::Snapshotter,
    before: u64,
) -> u64 {
    let got = peer.recv_raw_within(Duration::from_millis(700)).await;
    assert!(got.is_none(), "answered larger than the request: {got:?}");
    let counted = eventually(Duration::from_secs(2), async || {
        counter(snap, "answer_too_large") == before + 1
    })
    .await;
    assert!(counted, "the dropped answer is counted");
    before + 1
}
