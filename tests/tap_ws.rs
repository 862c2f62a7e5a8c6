//! The WebSocket tap end to end: an SRTP call through the real gateway, listened to over
//! `GET /v1/calls/{id}/tap/ws` with a recorder token. The client gets `start` with the
//! call's codec, one binary frame per packet of each leg (leg byte, RTP timestamp,
//! payload), and `stop` when the call is hung up. Closing the socket stops its taps;
//! another tenant's recorder gets 404, a viewer 403, no token 401.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_tap_support;

use sbc_testkit::tap_call::*;
use sbc_testkit::*;
use tokio_tungstenite::tungstenite::Message;
use ws_tap_support::*;

#[tokio::test]
async fn a_call_is_heard_over_a_websocket_until_it_ends() {
    let rig = Rig::start(
        "tap-ws",
        sbc_testkit::ports::free_udp_range(100),
        &tokens(),
        "",
    )
    .await;
    let a = rig.admin_addr();
    let mut call = TapCall::place(&rig, "tap-ws-1@platform").await;
    let (_, calls) = http(a, "GET", "/v1/calls", Some(OPS), "").await;
    let call_id = field(&calls, "id");
    let path = format!("/v1/calls/{call_id}/tap/ws");

    // Refusals, as HTTP answers to the upgrade.
    assert_eq!(open(a, &path, None).await.err(), Some(401));
    assert_eq!(open(a, &path, Some("not-a-token")).await.err(), Some(401));
    assert_eq!(open(a, &path, Some(VIEW)).await.err(), Some(403));
    assert_eq!(open(a, &path, Some(REC_OTHER)).await.err(), Some(404));
    let unknown = "/v1/calls/0000000000000000/tap/ws";
    assert_eq!(open(a, unknown, Some(REC)).await.err(), Some(404));
    let bad_legs = format!("{path}?legs=all");
    assert_eq!(open(a, &bad_legs, Some(REC)).await.err(), Some(400));
    let (status, body) = http(a, "GET", &path, Some(REC), "").await;
    assert_eq!(status, 426, "not an upgrade: {body}");
    assert_eq!(tap_count(a, &call_id).await, 0);

    // A client that leaves stops its tap.
    let mut ws = open(a, &format!("{path}?legs=caller"), Some(REC))
        .await
        .unwrap();
    let start = next_json(&mut ws).await;
    assert_eq!(start["legs"], "caller");
    assert_eq!(tap_count(a, &call_id).await, 1);
    ws.close(None).await.unwrap();
    until_taps(a, &call_id, 0).await;

    // Both legs: start, then every packet of each leg, in order per leg.
    let mut ws = open(a, &path, Some(REC)).await.unwrap();
    let start = next_json(&mut ws).await;
    assert_eq!(
        start,
        serde_json::json!({"type": "start", "call": call_id, "tenant": "demo", "legs": "both",
            "codec": "PCMU", "clock_rate": 8000, "resumed": false})
    );
    assert_eq!(tap_count(a, &call_id).await, 2);
    const PACKETS: u16 = 10;
    for seq in 1..=PACKETS {
        call.caller_sends(seq);
        call.callee_sends(seq);
    }
    let mut heard: [Vec<(u32, Vec<u8>)>; 2] = Default::default();
    while heard[0].len() + heard[1].len() < 2 * usize::from(PACKETS) {
        let Message::Binary(f) = next(&mut ws).await else {
            panic!("expected a binary frame");
        };
        let ts = u32::from_be_bytes(f[1..5].try_into().unwrap());
        heard[usize::from(f[0])].push((ts, f[5..].to_vec()));
    }
    for leg in 0..2u8 {
        let expected: Vec<(u32, Vec<u8>)> = (1..=PACKETS)
            .map(|seq| (u32::from(seq) * 160, payload(leg, seq)))
            .collect();
        assert_eq!(heard[usize::from(leg)], expected, "leg {leg}");
    }

    // Hang up: stop, then a close.
    call.hang_up().await;
    let stop = next_json(&mut ws).await;
    assert_eq!(
        stop,
        serde_json::json!({"type": "stop", "reason": "call_ended"})
    );
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close, got {other:?}"),
    }

    let (_, metrics) = http(a, "GET", "/metrics", None, "").await;
    let sent = 2 * u32::from(PACKETS);
    assert!(
        metrics.contains(&format!("sbc_tap_ws_frames_sent_total {sent}")),
        "{metrics}"
    );
    assert!(
        !metrics.contains("sbc_tap_ws_frames_dropped_total"),
        "{metrics}"
    );

    // Audited: each upgrade (101) and each end (WS-CLOSE with the close code).
    let audit_path = rig.audit_path.clone();
    rig.shutdown().await;
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |method: &str, status: u16| {
        lines
            .iter()
            .filter(|l| l["method"] == method && l["status"] == status && l["token"] == "rec")
            .count()
    };
    assert_eq!(of("GET", 101), 2);
    assert_eq!(of("WS-CLOSE", 1000), 2);
    assert!(lines
        .iter()
        .filter(|l| l["method"] == "WS-CLOSE")
        .all(|l| l["call"] == call_id.as_str() && l["tenant"] == "demo"));
    assert!(!audit.contains(REC), "no token in the audit log");
    sbc_admin::verify_audit(&audit_path).unwrap();
}
