//! A recording tap end to end: an SRTP call through the real gateway (SIP over TLS, the
//! media relay), found through the admin API by its registry id, tapped over HTTP; a
//! recorder socket decrypts both legs with the key the POST returned. Another tenant's
//! recorder cannot tap it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sbc_testkit::media::{self, b64, b64_decode, ctx, recv_srtp};
use sbc_testkit::tap_call::*;
use sbc_testkit::*;

#[tokio::test]
async fn a_live_call_is_tapped_through_the_admin_api() {
    let op = "operator-token-0123456789";
    let rec_other = "recorder-other-0123456789";
    let tokens = format!(
        "[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n\
[[admin.tokens]]\nid = \"rec-other\"\nsha256 = \"{}\"\nrole = \"recorder\"\ntenant = \"other\"\n",
        sbc_admin::token_sha256_hex(op),
        sbc_admin::token_sha256_hex(rec_other),
    );
    let rig = Rig::start(
        "tap-e2e",
        sbc_testkit::ports::free_udp_range(100),
        &tokens,
        "",
    )
    .await;
    let a = rig.admin_addr();

    // An SRTP call, answered.
    let recorder = media::peer();
    let mut call = TapCall::place(&rig, "tap-1@platform").await;

    // Found by its registry id; another tenant's recorder cannot tap it.
    let (status, calls) = http(a, "GET", "/v1/calls", Some(op), "").await;
    assert_eq!(status, 200, "{calls}");
    let call_id = field(&calls, "id");
    let taps = format!("/v1/calls/{call_id}/taps");
    let body = r#"{"legs":"both","transport":"srtp","destination":"DEST"}"#
        .replace("DEST", &recorder.local_addr().unwrap().to_string());
    let (status, _) = http(a, "POST", &taps, Some(rec_other), &body).await;
    assert_eq!(status, 404);
    let (status, started) = http(a, "POST", &taps, Some(op), &body).await;
    assert_eq!(status, 201, "{started}");
    let tap_id = field(&started, "tap_id");
    let key = b64_decode(field(&started, "key").strip_prefix("inline:").unwrap());
    let mut rec = ctx(SUITE, &key);

    // Media both ways; the recorder decrypts each copy.
    for seq in 1..=10u16 {
        let p = call.caller_sends(seq);
        assert_eq!(recv_srtp(&recorder, &mut rec), p, "caller copy {seq}");
        let p = call.callee_sends(seq);
        assert_eq!(recv_srtp(&recorder, &mut rec), p, "callee copy {seq}");
    }
    let listed = tap_listing(a, &taps, op, "\"packets_sent\":20").await;
    assert!(listed.contains("\"packets_sent\":20"), "{listed}");
    assert!(listed.contains("\"packets_dropped\":0"), "{listed}");
    assert!(!listed.contains("inline:"), "{listed}");
    let (_, metrics) = http(a, "GET", "/metrics", Some(op), "").await;
    assert!(
        metrics.contains("sbc_tap_packets_sent_total 20"),
        "{metrics}"
    );
    let (status, _) = http(a, "DELETE", &format!("/v1/taps/{tap_id}"), Some(op), "").await;
    assert_eq!(status, 204);
    let (_, listed) = http(a, "GET", &taps, Some(op), "").await;
    assert_eq!(listed, "{\"taps\":[]}");

    let audit_path = rig.audit_path.clone();
    rig.shutdown().await;
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        !audit.contains(&b64(&key)),
        "the tap key is never in the audit log"
    );
    assert!(sbc_admin::verify_audit(&audit_path).unwrap() >= 6);
}
