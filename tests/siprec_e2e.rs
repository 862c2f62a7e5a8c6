//! SIPREC end to end: the real gateway (TLS SIP, the media relay, SRTP on both legs) records
//! a call to a Rust SRS on loopback (`sbc_testkit::srs`): the SRS gets the INVITE with its
//! multipart body (metadata validated against RFC 7865's rules with a real XML parser),
//! answers with its own UDP ports, and decrypts both recorded streams with the keys the
//! gateway offered: their clear packets equal what the caller and the callee sent. Pause
//! and resume through the admin API (`/v1/calls/{id}/recordings`) re-INVITE the SRS
//! (`a=inactive`, then `a=sendonly`) and stop the fork meanwhile. The call's end sends BYE
//! to the SRS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sbc_sip::message::Method;
use sbc_testkit::files::{temp_dir, write};
use sbc_testkit::http::http;
use sbc_testkit::pki::Ca;
use sbc_testkit::srs::Srs;
use sbc_testkit::tap_call::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_legs_reach_the_srs_decrypted_equal_to_what_was_sent() {
    let srs_ca = Ca::new("srs test CA");
    let srs = Srs::new(&srs_ca.issue(&["localhost", "127.0.0.1"])).await;
    let ca_file = write(&temp_dir("siprec-e2e"), "srs-ca.pem", &srs_ca.pem);
    // `[tenants.media]` of the demo tenant stays empty; the recording section follows it.
    let srs_addr = srs.addr;
    let demo = format!(
        "\n[tenants.recording]\nsrs = [\"sips:{}\"]\nca_file = {ca_file:?}\nidentities = \"hash\"\n",
        srs.addr
    );
    let (op, tokens) = operator();
    let rig = Rig::start(
        "siprec-e2e",
        sbc_testkit::ports::free_udp_range(100),
        &tokens,
        &demo,
    )
    .await;
    // The SRS serves the recording INVITE while the call is set up.
    let served = tokio::spawn(async move {
        let mut s = srs.accept().await;
        let inv = s.serve_next().await;
        assert_eq!(inv.method(), Some(&Method::Invite));
        let ack = s.serve_next().await;
        assert_eq!(ack.method(), Some(&Method::Ack));
        (srs, s)
    });
    let mut call = TapCall::place(&rig, "siprec-1@platform").await;
    let (_srs, mut session) = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the SRS was called")
        .unwrap();
    let meta = session.metadata[0].clone();
    assert_eq!(meta.labels, vec!["1", "2"]);
    assert!(
        meta.aors.iter().all(|a| !a.contains("15551234")),
        "numbers hashed: {:?}",
        meta.aors
    );
    assert_eq!(session.streams.len(), 2);
    for seq in 1..=5u16 {
        let from_caller = call.caller_sends(seq);
        assert_eq!(
            session.recv_clear("1").as_deref(),
            Some(from_caller.as_slice()),
            "the caller's packet {seq}, decrypted by the SRS"
        );
        let from_callee = call.callee_sends(seq);
        assert_eq!(
            session.recv_clear("2").as_deref(),
            Some(from_callee.as_slice()),
            "the callee's packet {seq}, decrypted by the SRS"
        );
    }
    // Pause through the admin API (payment-card entry): a re-INVITE with both streams
    // inactive; nothing reaches the SRS while paused; resume re-offers sendonly.
    let a = rig.admin_addr();
    let (_, calls) = http(a, "GET", "/v1/calls", Some(op), "").await;
    let call_id = field(&calls, "id");
    let recordings = format!("/v1/calls/{call_id}/recordings");
    let (status, listed) = http(a, "GET", &recordings, Some(op), "").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(field(&listed, "state"), "recording");
    assert_eq!(field(&listed, "srs"), format!("sips:{srs_addr}"));
    let (status, body) = http(a, "POST", &format!("{recordings}/pause"), Some(op), "").await;
    assert_eq!(status, 202, "{body}");
    let re = session.serve_next().await;
    assert_eq!(re.method(), Some(&Method::Invite));
    assert!(
        session.streams.iter().all(|s| s.inactive),
        "a=inactive on both"
    );
    session.serve_next().await; // ACK
    let (_, listed) = http(a, "GET", &recordings, Some(op), "").await;
    assert_eq!(field(&listed, "state"), "paused");
    call.caller_sends(6);
    assert_eq!(session.recv_clear("1"), None, "paused: nothing forked");
    // api-only commands are refused for an `always` tenant.
    let (status, _) = http(a, "POST", &format!("{recordings}/stop"), Some(op), "").await;
    assert_eq!(status / 100, 4, "stop is for api mode");
    let (status, _) = http(a, "POST", &format!("{recordings}/resume"), Some(op), "").await;
    assert_eq!(status, 202);
    session.serve_next().await;
    assert!(
        session.streams.iter().all(|s| !s.inactive),
        "sendonly again"
    );
    session.serve_next().await; // ACK
    let from_caller = call.caller_sends(7);
    assert_eq!(
        session.recv_clear("1").as_deref(),
        Some(from_caller.as_slice())
    );
    assert_eq!(session.metadata.len(), 3, "every offer carried metadata");
    call.hang_up().await;
    let bye = session.serve_next().await;
    assert_eq!(
        bye.method(),
        Some(&Method::Bye),
        "the call's end ends the recording"
    );
    // The BYE carried the final snapshot (validated by the SRS): stop times.
    assert_eq!(
        session.metadata.len(),
        4,
        "the BYE carried the final metadata"
    );
    let last = &session.metadata[3];
    assert!(last.stops_after_start(), "{last:?}");
    assert_eq!(last.disassociated, 2, "{last:?}");
    assert!(
        session.metadata[..3].iter().all(|m| !m.has_stop_time),
        "only the final document stops"
    );
    // The recording's life is in the hash-chained audit log, written off the core loop.
    let events = ["started", "paused", "resumed", "stopped"];
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = siprec_audit_lines(&rig.audit_path, &call_id);
        if lines.len() >= events.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let paths: Vec<String> = lines.iter().map(|l| l["path"].to_string()).collect();
    for (event, line) in events.iter().zip(&lines) {
        let want = format!("recording/{event}?srs=sips:{srs_addr}");
        assert_eq!(line["path"], want.as_str(), "{paths:?}");
        assert_eq!(line["tenant"], "demo");
        assert_eq!(line["status"], 0);
        assert!(line["token"].is_null());
    }
    assert_eq!(lines.len(), events.len(), "{paths:?}");
    let verified = sbc_admin::verify_audit(&rig.audit_path).expect("the audit chain holds");
    assert!(
        verified > events.len(),
        "admin requests are in the same chain"
    );
    rig.shutdown().await;
}

/// The audit log's SIPREC lines of `call`, in order.
fn siprec_audit_lines(path: &std::path::Path, call: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["method"] == "SIPREC" && v["call"] == call)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_call_of_a_tenant_without_recording_answers_not_configured() {
    let (op, tokens) = operator();
    // No `[tenants.recording]`: the demo tenant's calls are not recordable.
    let rig = Rig::start(
        "siprec-unconfigured",
        sbc_testkit::ports::free_udp_range(100),
        &tokens,
        "",
    )
    .await;
    let mut call = TapCall::place(&rig, "siprec-2@platform").await;
    let a = rig.admin_addr();
    let (_, calls) = http(a, "GET", "/v1/calls", Some(op), "").await;
    let recordings = format!("/v1/calls/{}/recordings", field(&calls, "id"));
    let (status, body) = http(a, "POST", &format!("{recordings}/pause"), Some(op), "").await;
    assert_eq!(status, 409, "a live call, recording not configured: {body}");
    assert!(body.contains("not configured"), "{body}");
    let (status, body) = http(
        a,
        "POST",
        "/v1/calls/no-such-call/recordings/pause",
        Some(op),
        "",
    )
    .await;
    assert_eq!(status, 404, "an unknown call stays 404: {body}");
    call.hang_up().await;
    rig.shutdown().await;
}

/// An operator token and its `[[admin.tokens]]` entry.
fn operator() -> (&'static str, String) {
    let op = "operator-token-0123456789";
    let tokens = format!(
        "[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n",
        sbc_admin::token_sha256_hex(op)
    );
    (op, tokens)
}
