//! Automatic recording taps from tenant config: `[tenants.media] record_to` forks every
//! call of the tenant as plain RTP to a recorder from its first packet, lists the tap like
//! any other, and ends it with the call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sbc_testkit::media;
use sbc_testkit::tap_call::*;
use sbc_testkit::*;

const OPS: &str = "operator-token-0123456789";

#[tokio::test]
async fn record_to_forks_every_packet_of_the_tenants_calls() {
    let recorder = media::peer();
    let dest = recorder.local_addr().unwrap();
    let tokens = format!(
        "[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n",
        sbc_admin::token_sha256_hex(OPS)
    );
    let media = format!("record_to = \"{dest}\"\nrecord_legs = \"both\"");
    let rig = Rig::start(
        "auto-tap",
        sbc_testkit::ports::free_udp_range(100),
        &tokens,
        &media,
    )
    .await;
    let a = rig.admin_addr();
    let mut call = TapCall::place(&rig, "auto-tap-1@platform").await;

    // Every packet, first one included, arrives clear at the recorder.
    const PACKETS: u16 = 10;
    let mut sent = Vec::new();
    for seq in 1..=PACKETS {
        sent.push(call.caller_sends(seq));
        sent.push(call.callee_sends(seq));
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < sent.len() {
        let (n, _) = recorder.recv_from(&mut buf).expect("a tap copy");
        got.push(buf[..n].to_vec());
    }
    // Order per leg is kept; the two legs may interleave differently.
    let by_ssrc = |v: &[Vec<u8>], ssrc: u32| -> Vec<Vec<u8>> {
        v.iter()
            .filter(|p| p[8..12] == ssrc.to_be_bytes())
            .cloned()
            .collect()
    };
    for ssrc in [CALLER_SSRC, CALLEE_SSRC] {
        assert_eq!(by_ssrc(&got, ssrc), by_ssrc(&sent, ssrc), "ssrc {ssrc:x}");
    }

    // Listed like any other tap, with its counters.
    let (_, calls) = http(a, "GET", "/v1/calls", Some(OPS), "").await;
    let taps = format!("/v1/calls/{}/taps", field(&calls, "id"));
    let listed = tap_listing(a, &taps, OPS, "\"packets_sent\":20").await;
    assert_eq!(listed.matches("\"tap_id\"").count(), 1, "{listed}");
    assert!(
        listed.contains(&format!("\"destination\":\"{dest}\"")),
        "{listed}"
    );
    assert!(listed.contains("\"transport\":\"rtp\""), "{listed}");
    assert!(listed.contains("\"packets_sent\":20"), "{listed}");

    // It ends with the call.
    call.hang_up().await;
    for _ in 0..100 {
        if rig.engine.stats().active_calls == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.engine.stats().active_calls, 0);
    let tap_id = field(&listed, "tap_id");
    let (status, _) = http(a, "DELETE", &format!("/v1/taps/{tap_id}"), Some(OPS), "").await;
    assert_eq!(status, 404, "the tap ended with the call");
    rig.shutdown().await;
}
