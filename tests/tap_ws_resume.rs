//! The WebSocket tap resumed after a hot standby takeover (issue #16) or any break: a
//! client that reconnects with `resume_after_ms` (the unix ms of its last frame) gets
//! `"resumed":true` in `start` and a `gap` message before each leg's first frame, from
//! its last frame to the first packet this node forwards; a value more than 2 s in the
//! future or older than 1 h is a 400 saying which. The tap's loopback forks are not in
//! the replicated media part (a standby must not re-create them), while an ordinary
//! recorder tap is. A test binary of its own: the metrics registry is per process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_tap_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sbc_core::standby::{ReplicaPart, ReplicaSink, ReplicaUpdate};

use sbc_testkit::tap_call::*;
use sbc_testkit::*;
use tokio_tungstenite::tungstenite::Message;
use ws_tap_support::*;

/// The latest media part the gateway's engine replicated.
#[derive(Debug, Default)]
struct LastMedia(Mutex<Option<Vec<u8>>>);

impl ReplicaSink for LastMedia {
    fn put(&self, u: ReplicaUpdate) {
        if u.part == ReplicaPart::Media {
            *self.0.lock().unwrap() = Some(u.public);
        }
    }
    fn remove(&self, _: sbc_core::media::CallRef) {}
}

impl LastMedia {
    /// The ids of the taps in the latest media part.
    fn tap_ids(&self) -> Vec<u64> {
        let part = self.0.lock().unwrap().clone().expect("a media part");
        let v: serde_json::Value = serde_json::from_slice(&part).unwrap();
        v["taps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect()
    }
}

fn unix_ms() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(d.as_millis()).unwrap()
}

#[tokio::test]
async fn a_reconnecting_client_resumes_with_a_gap_per_leg() {
    let rig = Rig::start(
        "tap-ws-resume",
        sbc_testkit::ports::free_udp_range(100),
        &tokens(),
        "",
    )
    .await;
    let replica = Arc::new(LastMedia::default());
    rig.engine
        .set_replica_sink(replica.clone(), Duration::from_secs(60));
    let a = rig.admin_addr();
    let mut call = TapCall::place(&rig, "tap-ws-resume-1@platform").await;
    let (_, calls) = http(a, "GET", "/v1/calls", Some(OPS), "").await;
    let call_id = field(&calls, "id");
    let path = format!("/v1/calls/{call_id}/tap/ws");

    // Out of bounds: in the future (beyond the 2 s skew), older than 1 h, not a number.
    let now = unix_ms();
    for bad in [
        (now + 60_000).to_string(),
        (now - 3_601_000).to_string(),
        "yesterday".to_string(),
        "-5".to_string(),
    ] {
        let q = format!("{path}?resume_after_ms={bad}");
        assert_eq!(open(a, &q, Some(REC)).await.err(), Some(400), "{bad}");
        let (status, body) = http(a, "GET", &q, Some(REC), "").await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("resume_after_ms"), "{bad}: {body}");
    }
    let q = format!("{path}?resume_after_ms={}", now + 60_000);
    let (_, body) = http(a, "GET", &q, Some(REC), "").await;
    assert!(body.contains("in the future"), "{body}");
    let q = format!("{path}?resume_after_ms={}", now - 3_601_000);
    let (_, body) = http(a, "GET", &q, Some(REC), "").await;
    assert!(body.contains("older than 1 h"), "{body}");
    assert_eq!(tap_count(a, &call_id).await, 0, "no tap for a refusal");

    // The client's last frame was 3 s ago (it was on the node that died).
    let last = unix_ms() - 3_000;
    let q = format!("{path}?resume_after_ms={last}");
    let mut ws = open(a, &q, Some(REC)).await.unwrap();
    let start = next_json(&mut ws).await;
    assert_eq!(start["resumed"], true, "{start}");
    assert_eq!(start["call"], call_id.as_str());
    // Its forks run here but are not replicated; a recorder tap is.
    assert_eq!(listed_tap_ids(a, &call_id).await.len(), 2);
    assert_eq!(
        replica.tap_ids(),
        Vec::<u64>::new(),
        "no WebSocket fork stored"
    );
    let recorder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let body = format!(
        r#"{{"legs":"caller","transport":"rtp","destination":"{}"}}"#,
        recorder.local_addr().unwrap()
    );
    let (status, created) = http(
        a,
        "POST",
        &format!("/v1/calls/{call_id}/taps"),
        Some(OPS),
        &body,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let recorder_tap = u64::from_str_radix(&field(&created, "tap_id"), 16).unwrap();
    assert_eq!(listed_tap_ids(a, &call_id).await.len(), 3);
    assert_eq!(
        replica.tap_ids(),
        vec![recorder_tap],
        "only the recorder tap"
    );
    // Packets sent before the gap's `to_ms` can only be later than this.
    let before_send = unix_ms();
    const PACKETS: u16 = 5;
    for seq in 1..=PACKETS {
        call.caller_sends(seq);
        call.callee_sends(seq);
    }
    let mut gaps: [Option<serde_json::Value>; 2] = [None, None];
    let mut frames = [0u16; 2];
    while frames[0] + frames[1] < 2 * PACKETS {
        match next(&mut ws).await {
            Message::Text(t) => {
                let gap: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(gap["type"], "gap", "{gap}");
                let leg = usize::from(gap["leg"] == "callee");
                assert_eq!(frames[leg], 0, "the gap precedes the leg's first frame");
                assert!(gaps[leg].replace(gap).is_none(), "one gap per leg");
            }
            Message::Binary(f) => {
                let leg = usize::from(f[0]);
                assert!(gaps[leg].is_some(), "leg {leg}: a frame before its gap");
                frames[leg] += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let after = unix_ms();
    for (leg, gap) in ["caller", "callee"].iter().zip(&gaps) {
        let gap = gap.as_ref().unwrap();
        assert_eq!(gap["leg"], *leg);
        assert_eq!(gap["from_ms"], last);
        let to = gap["to_ms"].as_u64().unwrap();
        assert!(
            (before_send..=after).contains(&to),
            "{gap}: {before_send}..={after}"
        );
    }
    ws.close(None).await.unwrap();
    until_taps(a, &call_id, 1).await;
    assert_eq!(listed_tap_ids(a, &call_id).await, vec![recorder_tap]);
    let (_, metrics) = http(a, "GET", "/metrics", None, "").await;
    assert!(metrics.contains("sbc_tap_ws_resumed_total 1"), "{metrics}");
    call.hang_up().await;
    rig.shutdown().await;
}
