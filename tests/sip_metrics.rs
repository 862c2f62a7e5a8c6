//! Metrics recorded by the SIP side during real calls over TLS (one test per binary: the
//! recorder is process-global).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use sbc_sip::message::Method;
use sbc_testkit::*;

type Snapshot = HashMap<(String, Vec<(String, String)>), f64>;

fn snapshot(snapshotter: &metrics_util::debugging::Snapshotter) -> Snapshot {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, v)| {
            let key = ck.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            let value = match v {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            ((key.name().to_string(), labels), value)
        })
        .collect()
}

fn get(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    s.get(&(name.to_string(), l)).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn calls_handshakes_and_rejections_are_counted_by_tenant_and_class() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("recorder installs once");

    let (world, gw, callee) = loopback_gateway("metrics", "demo", "+1", "", "").await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;

    // One answered call, one busy, one without route, one malformed request.
    caller
        .send(&invite("+1555", "m-1@platform", "z9hG4bKm1", "atag"))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    c.send(&answer(&inv, 200, "btag")).await;
    caller.recv_where(|m| m.status() == Some(200)).await;

    caller
        .send(&invite("+1556", "m-2@platform", "z9hG4bKm2", "atag"))
        .await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    c.send(&answer(&inv, 486, "btag")).await;
    caller.recv_where(|m| m.status() == Some(486)).await;

    caller
        .send(&invite("+44", "m-3@platform", "z9hG4bKm3", "atag"))
        .await;
    caller.recv_where(|m| m.status() == Some(404)).await;

    caller
        .send_raw(b"OPTIONS sips:x SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKq\r\nFrom: <sips:a@b>;tag=1\r\nTo: <sips:c@d>\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert!(caller.recv_raw().await.starts_with("SIP/2.0 400 "));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let s = snapshot(&snapshotter);
    let demo = ("tenant", "demo");
    assert_eq!(get(&s, "sbc_sip_calls_attempted_total", &[demo]), 3.0);
    assert_eq!(get(&s, "sbc_sip_calls_answered_total", &[demo]), 1.0);
    assert_eq!(
        get(&s, "sbc_sip_calls_failed_total", &[demo, ("class", "4xx")]),
        2.0
    );
    assert_eq!(get(&s, "sbc_sip_active_dialogs", &[]), 1.0);
    assert_eq!(
        get(
            &s,
            "sbc_tls_handshakes_total",
            &[("side", "inbound"), ("kind", "full")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "sbc_tls_handshakes_total",
            &[("side", "outbound"), ("kind", "full")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "sbc_sip_messages_rejected_total",
            &[("reason", "malformed")]
        ),
        1.0
    );
    // Framed off the wire: three INVITEs and the bad OPTIONS from the caller, 200 and 486
    // from the callee.
    assert_eq!(
        get(&s, "sbc_sip_messages_received_total", &[]),
        6.0,
        "{s:?}"
    );
}
