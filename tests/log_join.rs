//! Logs you can join: one call, followed through SIP, media and the admin plane, is named
//! by one id string in every log line, in the admin API and in the audit log; its start
//! and end lines carry both legs' SIP Call-IDs (hashed, since number redaction is on) and
//! the route target's address (`target_addr`: with flat fields, `target` is the module). Captured as flat JSON lines, as `--log-json` writes them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sbc_core::redact::Redaction;
use sbc_testkit::logs::Capture;
use sbc_testkit::media;
use sbc_testkit::tap_call::*;
use sbc_testkit::*;

const OPS: &str = "operator-token-join-0123456789";

#[tokio::test]
async fn one_call_one_id_in_logs_api_and_audit() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_env_filter("info")
        .init();

    let tokens = format!(
        "[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n",
        sbc_admin::token_sha256_hex(OPS),
    );
    let rig = Rig::start_with(
        "log-join",
        sbc_testkit::ports::free_udp_range(100),
        &tokens,
        "",
        "[logging]\nredact_numbers = \"hash\"\n",
    )
    .await;
    let a = rig.admin_addr();
    let inbound = "join-1@platform.example";
    let mut call = TapCall::place(&rig, inbound).await;
    let outbound = call.callee_sip_call_id().to_string();

    // The API's id for the call, and a tap on it (logged by the admin plane and the relay).
    let (status, calls) = http(a, "GET", "/v1/calls", Some(OPS), "").await;
    assert_eq!(status, 200, "{calls}");
    let id = field(&calls, "id");
    assert_eq!(id.len(), 16, "{id}");
    let recorder = media::peer();
    let body = format!(
        r#"{{"legs":"both","transport":"rtp","destination":"{}"}}"#,
        recorder.local_addr().unwrap()
    );
    let (status, tap) = http(a, "POST", &format!("/v1/calls/{id}/taps"), Some(OPS), &body).await;
    assert_eq!(status, 201, "{tap}");
    call.caller_sends(1);
    call.callee_sends(1);
    call.hang_up().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let audit_path = rig.audit_path.clone();
    let target = rig.callee.addr.to_string();
    rig.shutdown().await;

    let text = capture.text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Flat: the fields sit beside `message`, not under `fields`.
    assert!(lines.iter().all(|l| l.get("fields").is_none()), "{text}");
    let named: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("call").is_some()).collect();
    for l in &named {
        assert_eq!(l["call"].as_str(), Some(id.as_str()), "another id in {l}");
    }
    let line = |message: &str| {
        named
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no line {message:?} naming the call in {text}"))
    };
    // SIP, media and the admin plane all name the call.
    line("call admitted, relaying INVITE");
    line("call ended");
    assert!(
        named
            .iter()
            .filter(|l| l["message"] == "recording tap started")
            .count()
            >= 2,
        "the admin plane's and the relay's tap lines: {text}"
    );

    let hashed_in = Redaction::Hash.call_id(inbound).to_string();
    let hashed_out = Redaction::Hash.call_id(&outbound).to_string();
    assert!(hashed_in.starts_with('#') && hashed_in.len() == 13);
    assert_ne!(hashed_in, hashed_out);
    for message in ["call admitted, relaying INVITE", "call ended"] {
        let l = line(message);
        assert_eq!(
            l["sip_call_id_in"].as_str(),
            Some(hashed_in.as_str()),
            "{l}"
        );
        assert_eq!(
            l["sip_call_id_out"].as_str(),
            Some(hashed_out.as_str()),
            "{l}"
        );
        assert_eq!(l["target_addr"].as_str(), Some(target.as_str()), "{l}");
    }
    assert!(
        !text.contains(inbound) && !text.contains(&outbound),
        "a Call-ID in clear: {text}"
    );
    assert!(!text.contains("\"target_addr\":0"), "{text}");

    // The audit log names the call by the same string.
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let audited: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l.get("call").is_some_and(|c| !c.is_null()))
        .collect();
    assert!(!audited.is_empty(), "{audit}");
    for l in &audited {
        assert_eq!(l["call"].as_str(), Some(id.as_str()), "{l}");
    }
}
