//! SIPREC recording endpoints: roles and tenant scoping, the command handed to the
//! recording client, error statuses, audit lines, and 501 when no recording client is
//! wired. The recording client is a small in-memory `RecordingControl` (the real one is
//! the B2BUA's, in sbc-sip, which sbc-admin does not depend on).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sbc_core::media::CallRef;
use sbc_core::recording::{
    RecordingCommand, RecordingControl, RecordingError, RecordingId, RecordingState,
    RecordingStatus,
};
use sbc_core::registry::CallId;
use sbc_core::tap::TapId;
use sbc_testkit::admin::{audit_lines, config, start_with, Fixture, OPS, REC_A, VIEW_A};
use sbc_testkit::http::request_with;

/// The recording client: calls 1 (tenant a) and 2 (tenant b) have one session each;
/// commands are recorded and answered with `refuse` when set.
#[derive(Debug, Default)]
struct FakeRecording {
    commands: Mutex<Vec<(CallRef, RecordingCommand)>>,
    refuse: Mutex<Option<RecordingError>>,
}

impl RecordingControl for FakeRecording {
    fn recordings(&self, call: CallRef) -> Option<Vec<RecordingStatus>> {
        matches!(call.0, 1 | 2).then(|| {
            vec![RecordingStatus {
                id: RecordingId(0x1234_5678_9abc_def0 + call.0),
                srs: "sips:srs@rec.example.net".to_string(),
                state: RecordingState::Recording,
                streams: vec![TapId(0xa1), TapId(0xa2)],
                started_unix: Some(1_700_000_000),
                failovers: 1,
            }]
        })
    }

    fn command(&self, call: CallRef, cmd: RecordingCommand) -> Result<(), RecordingError> {
        if let Some(e) = self.refuse.lock().expect("lock").clone() {
            return Err(e);
        }
        self.commands.lock().expect("lock").push((call, cmd));
        Ok(())
    }
}

/// The shared admin fixture (calls of tenants a and b) with the fake recording client
/// wired, or none; the calls get media numbers 1 (a) and 2 (b).
async fn fixture(name: &str, wired: bool) -> (Fixture, Arc<FakeRecording>) {
    let fake = Arc::new(FakeRecording::default());
    let control = wired.then(|| fake.clone() as Arc<dyn RecordingControl>);
    let w = start_with(name, config(false), control).await;
    assert!(w.registry.set_media_ref(&w.call_a, 1));
    assert!(w.registry.set_media_ref(&w.call_b, 2));
    (w, fake)
}

async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let r = request_with(
        addr,
        method,
        path,
        &[("Authorization", auth.as_str())],
        Some(""),
    )
    .await;
    let json = if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        r.json()
    };
    (r.status, json)
}

fn list(call: &CallId) -> String {
    format!("/v1/calls/{call}/recordings")
}

fn action(call: &CallId, action: &str) -> String {
    format!("/v1/calls/{call}/recordings/{action}")
}

#[tokio::test]
async fn operator_lists_and_commands_and_every_request_is_audited() {
    let (w, fake) = fixture("rec-ops", true).await;
    let (st, j) = http_json(w.addr, "GET", &list(&w.call_a), OPS).await;
    assert_eq!(st, 200, "{j}");
    let r = &j["recordings"][0];
    assert_eq!(r["recording_id"], "123456789abcdef1");
    assert_eq!(r["srs"], "sips:srs@rec.example.net");
    assert_eq!(r["state"], "recording");
    assert_eq!(r["streams"][0], "00000000000000a1");
    assert_eq!(r["started"], "2023-11-14T22:13:20.000Z");
    assert_eq!(r["failovers"], 1);

    for (name, cmd) in [
        ("start", RecordingCommand::Start),
        ("pause", RecordingCommand::Pause),
        ("resume", RecordingCommand::Resume),
        ("stop", RecordingCommand::Stop),
    ] {
        let (st, j) = http_json(w.addr, "POST", &action(&w.call_b, name), OPS).await;
        assert_eq!(st, 202, "{name}: {j}");
        assert_eq!(j["action"], name);
        assert_eq!(j["call"], w.call_b.as_str());
        assert_eq!(
            fake.commands.lock().expect("lock").last(),
            Some(&(CallRef(2), cmd))
        );
    }
    let (st, _) = http_json(w.addr, "POST", &action(&w.call_a, "rewind"), OPS).await;
    assert_eq!(st, 404, "unknown action");
    let (st, _) = http_json(w.addr, "GET", &action(&w.call_a, "start"), OPS).await;
    assert_eq!(st, 405, "commands are POST");
    assert_eq!(fake.commands.lock().expect("lock").len(), 4);

    let lines = audit_lines(&w.audit_path);
    let commands: Vec<_> = lines
        .iter()
        .filter(|l| l["method"] == "POST" && l["status"] == 202)
        .collect();
    assert_eq!(commands.len(), 4);
    assert!(commands
        .iter()
        .all(|l| l["call"] == w.call_b.as_str() && l["tenant"] == "b" && l["role"] == "operator"));
    assert!(commands
        .iter()
        .any(|l| l["path"] == action(&w.call_b, "pause").as_str()));
    let refused = lines
        .iter()
        .find(|l| l["status"] == 404)
        .expect("unknown action audited");
    assert_eq!(refused["call"], w.call_a.as_str());
    assert!(lines
        .iter()
        .any(|l| l["method"] == "GET" && l["status"] == 200));
}

#[tokio::test]
async fn recorder_is_scoped_to_its_tenant_and_viewer_may_only_list() {
    let (w, fake) = fixture("rec-scope", true).await;
    let (st, _) = http_json(w.addr, "POST", &action(&w.call_a, "pause"), REC_A).await;
    assert_eq!(st, 202);
    // Another tenant's call looks like no call, for listing and commands.
    let (st, j) = http_json(w.addr, "POST", &action(&w.call_b, "pause"), REC_A).await;
    assert_eq!((st, j["error"].as_str()), (404, Some("no such call")));
    let (st, _) = http_json(w.addr, "GET", &list(&w.call_b), REC_A).await;
    assert_eq!(st, 404);
    let (st, j) = http_json(
        w.addr,
        "POST",
        "/v1/calls/00000000000000ff/recordings/stop",
        REC_A,
    )
    .await;
    assert_eq!((st, j["error"].as_str()), (404, Some("no such call")));
    // A viewer lists its tenant's recordings, commands none.
    let (st, j) = http_json(w.addr, "GET", &list(&w.call_a), VIEW_A).await;
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["recordings"].as_array().map(Vec::len), Some(1));
    let (st, _) = http_json(w.addr, "POST", &action(&w.call_a, "stop"), VIEW_A).await;
    assert_eq!(st, 403);
    assert_eq!(
        *fake.commands.lock().expect("lock"),
        vec![(CallRef(1), RecordingCommand::Pause)],
        "only the allowed command reached the recording client"
    );
    let lines = audit_lines(&w.audit_path);
    let denied = lines
        .iter()
        .find(|l| l["status"] == 404 && l["path"] == action(&w.call_b, "pause").as_str())
        .expect("the refused command is audited");
    assert_eq!(
        denied["tenant"], "b",
        "the audit line says whose call was asked for"
    );
    assert_eq!(denied["role"], "recorder");
    assert!(lines
        .iter()
        .any(|l| l["status"] == 403 && l["role"] == "viewer"));
}

#[tokio::test]
async fn refusals_map_to_statuses_and_unwired_is_501() {
    let (w, fake) = fixture("rec-errors", true).await;
    for (e, status) in [
        (RecordingError::UnknownCall(CallRef(1)), 404),
        (RecordingError::NotConfigured, 409),
        (RecordingError::NotApiMode, 409),
        (RecordingError::WrongState("not recording"), 409),
        (RecordingError::Unavailable("queue full"), 503),
    ] {
        let msg = e.to_string();
        *fake.refuse.lock().expect("lock") = Some(e);
        let (st, j) = http_json(w.addr, "POST", &action(&w.call_a, "start"), OPS).await;
        assert_eq!(st, status, "{msg}: {j}");
        if status == 409 {
            assert_eq!(j["error"], msg.as_str(), "the reason is in the answer");
        }
    }
    assert!(fake.commands.lock().expect("lock").is_empty());
    let audited = audit_lines(&w.audit_path)
        .iter()
        .filter(|l| l["method"] == "POST" && l["call"] == w.call_a.as_str())
        .count();
    assert_eq!(audited, 5, "every refused command audited with its call");

    let (w, _) = fixture("rec-unwired", false).await;
    let (st, j) = http_json(w.addr, "GET", &list(&w.call_a), OPS).await;
    assert_eq!(st, 501);
    assert!(j["error"].as_str().is_some_and(|m| m.contains("recording")));
    let (st, _) = http_json(w.addr, "POST", &action(&w.call_a, "start"), OPS).await;
    assert_eq!(st, 501);
    // The role is checked first: a viewer learns nothing about the wiring.
    let (st, _) = http_json(w.addr, "POST", &action(&w.call_a, "start"), VIEW_A).await;
    assert_eq!(st, 403);
}
