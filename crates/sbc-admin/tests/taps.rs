//! Recording tap endpoints: roles and tenant scoping, request validation, the key handed out
//! once and never audited, and 501 without a media relay. The media side is a small
//! in-memory `TapControl` (the real one is tested in sbc-media's media_taps.rs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sbc_admin::{AdminConfig, AdminState, AuditLog, Role};
use sbc_core::media::CallRef;
use sbc_core::registry::{CallId, CallRecord, CallRegistry, DrainState};
use sbc_core::tap::{
    TapControl, TapError, TapId, TapInfo, TapKey, TapOwner, TapSpec, TapStatus, TapTransport,
};
use sbc_core::tenant::TenantId;
use sbc_testkit::admin::{audit_lines, prometheus, token, tokens, OPS, REC_A, VIEW_A, VIEW_B};
use sbc_testkit::files::temp_dir;
use sbc_testkit::http::request_with;

const REC_B: &str = "rec-b-3d6f0a9c1e7b";

// This binary's fixture has a media side (a fake `TapControl`), so it stays here; the
// tokens, Prometheus handle, temp dir and HTTP client come from sbc-testkit.

/// The shared tokens and a recorder of tenant b.
fn config() -> AdminConfig {
    let mut tokens = tokens();
    tokens.push(token("rec-b", REC_B, Role::Recorder(TenantId::from("b"))));
    AdminConfig {
        tokens,
        ..AdminConfig::default()
    }
}

/// What the fake hands out as every SRTP tap's key.
const KEY: &str = "inline:WVNVQUxSV1BWTEVGUlZOOVhSTkdKUlhCRU9YRlJW";

#[derive(Debug, Default)]
struct FakeTaps {
    /// Calls with media, by media number.
    calls: HashMap<u64, TenantId>,
    taps: Mutex<HashMap<TapId, (CallRef, TapSpec)>>,
    next: Mutex<u64>,
}

impl TapControl for FakeTaps {
    fn start_tap(&self, call: CallRef, spec: TapSpec) -> Result<TapInfo, TapError> {
        if !self.calls.contains_key(&call.0) {
            return Err(TapError::UnknownCall(call));
        }
        let mut next = self.next.lock().expect("lock");
        *next += 1;
        let id = TapId(0xab00 + *next);
        self.taps.lock().expect("lock").insert(id, (call, spec));
        let key = matches!(spec.transport, TapTransport::Srtp(_)).then(|| TapKey::new(KEY.into()));
        Ok(TapInfo { id, key })
    }

    fn stop_tap(&self, tap: TapId) -> bool {
        self.taps.lock().expect("lock").remove(&tap).is_some()
    }

    fn list_taps(&self, call: CallRef) -> Vec<TapStatus> {
        let mut v: Vec<TapStatus> = self
            .taps
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, (c, _))| *c == call)
            .map(|(id, (_, s))| TapStatus {
                id: *id,
                legs: s.legs,
                transport: s.transport,
                destination: s.destination,
                packets_sent: 42,
                packets_dropped: 3,
                recording: false,
                paused: false,
            })
            .collect();
        v.sort_by_key(|t| t.id);
        v
    }

    fn tap_owner(&self, tap: TapId) -> Option<TapOwner> {
        let taps = self.taps.lock().expect("lock");
        let (call, _) = taps.get(&tap)?;
        Some(TapOwner {
            call: *call,
            tenant: self.calls.get(&call.0)?.clone(),
        })
    }
}

/// The admin plane over a registry with calls of tenants a and b and a fake media side.
struct TapFixture {
    addr: SocketAddr,
    handle: sbc_admin::AdminHandle,
    audit_path: std::path::PathBuf,
    fake: Arc<FakeTaps>,
    /// Tenant a's call with media (media number 1), tenant b's (2), a's without media.
    call_a: CallId,
    call_b: CallId,
    call_a_setup: CallId,
}

fn record(tenant: &str) -> CallRecord {
    CallRecord {
        tenant: TenantId::from(tenant),
        start: SystemTime::now(),
        caller: "+15551230001".to_string(),
        callee: "+15559870002".to_string(),
        inbound_sip_call_id: format!("{tenant}-sip@example"),
    }
}

async fn tap_fixture(name: &str, with_taps: bool) -> TapFixture {
    let dir = temp_dir(name);
    let registry = Arc::new(CallRegistry::new());
    let call_a = registry.register(record("a")).expect("room");
    let call_b = registry.register(record("b")).expect("room");
    let call_a_setup = registry.register(record("a")).expect("room");
    assert!(registry.set_media_ref(&call_a, 1));
    assert!(registry.set_media_ref(&call_b, 2));
    let fake = Arc::new(FakeTaps {
        calls: HashMap::from([(1, TenantId::from("a")), (2, TenantId::from("b"))]),
        ..FakeTaps::default()
    });
    let audit_path = dir.join("audit.jsonl");
    let state = AdminState {
        registry,
        usage: Arc::new(|_: &TenantId| None),
        drain: Arc::new(DrainState::new()),
        prometheus: prometheus(),
        tenants: vec![TenantId::from("a"), TenantId::from("b")],
        audit: Arc::new(AuditLog::open(&audit_path).expect("audit log")),
        taps: with_taps.then(|| fake.clone() as Arc<dyn TapControl>),
        recordings: None,
    };
    let mut cfg = config();
    cfg.address = "127.0.0.1:0".parse().expect("addr");
    let handle = sbc_admin::serve(cfg, state).await.expect("serve");
    TapFixture {
        addr: handle.local_addr(),
        handle,
        audit_path,
        fake,
        call_a,
        call_b,
        call_a_setup,
    }
}

/// One request with an optional JSON body; (status, body as JSON or Null). Answers must
/// be sized, not chunked.
async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = request_with(addr, method, path, &headers, Some(body.unwrap_or(""))).await;
    assert_ne!(
        r.header("transfer-encoding"),
        Some("chunked"),
        "sized answers"
    );
    let json = if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        r.json()
    };
    (r.status, json)
}

fn taps_path(call: &CallId) -> String {
    format!("/v1/calls/{call}/taps")
}

const SRTP_BOTH: &str = r#"{"legs":"both","transport":"srtp","destination":"127.0.0.1:40000"}"#;
const RTP_CALLER: &str = r#"{"legs":"caller","transport":"rtp","destination":"127.0.0.1:40002"}"#;

#[tokio::test]
async fn operator_starts_lists_and_stops_a_tap_and_the_key_is_shown_once() {
    let w = tap_fixture("taps-ops", true).await;
    let (st, j) = http_json(w.addr, "POST", &taps_path(&w.call_a), OPS, Some(SRTP_BOTH)).await;
    assert_eq!(st, 201, "{j}");
    assert_eq!(j["key"], KEY);
    assert_eq!(j["suite"], "AES_CM_128_HMAC_SHA1_80", "the default suite");
    assert_eq!(j["legs"], "both");
    assert_eq!(j["destination"], "127.0.0.1:40000");
    let tap_id = j["tap_id"].as_str().expect("tap id").to_string();
    assert_eq!(tap_id.len(), 16);
    // The media side got exactly what was asked for.
    let spec = w
        .fake
        .taps
        .lock()
        .expect("lock")
        .values()
        .next()
        .expect("a tap")
        .1;
    assert_eq!(spec.destination, "127.0.0.1:40000".parse().expect("addr"));

    let body = r#"{"legs":"callee","transport":"srtp","suite":"AES_256_CM_HMAC_SHA1_80","destination":"localhost:40004"}"#;
    let (st, j) = http_json(w.addr, "POST", &taps_path(&w.call_a), OPS, Some(body)).await;
    assert_eq!(st, 201, "{j}");
    assert_eq!(j["suite"], "AES_256_CM_HMAC_SHA1_80");
    assert!(j["destination"].as_str().expect("dest").ends_with(":40004"));
    let (st, j) = http_json(w.addr, "POST", &taps_path(&w.call_a), OPS, Some(RTP_CALLER)).await;
    assert_eq!(st, 201, "{j}");
    assert!(j.get("key").is_none() && j.get("suite").is_none(), "{j}");

    let (st, j) = http_json(w.addr, "GET", &taps_path(&w.call_a), OPS, None).await;
    assert_eq!(st, 200);
    let taps = j["taps"].as_array().expect("list");
    assert_eq!(taps.len(), 3);
    assert_eq!(taps[0]["tap_id"], tap_id.as_str());
    assert_eq!(taps[0]["packets_sent"], 42);
    assert_eq!(taps[0]["packets_dropped"], 3);
    assert_eq!(
        (&taps[0]["recording"], &taps[0]["paused"]),
        (&false.into(), &false.into())
    );
    assert_eq!(taps[2]["transport"], "rtp");
    assert_eq!(taps[2]["legs"], "caller");
    assert!(!j.to_string().contains("inline:"), "no key in the list");

    let (st, _) = http_json(w.addr, "DELETE", &format!("/v1/taps/{tap_id}"), OPS, None).await;
    assert_eq!(st, 204);
    let (st, _) = http_json(w.addr, "DELETE", &format!("/v1/taps/{tap_id}"), OPS, None).await;
    assert_eq!(st, 404, "already stopped");
    let (_, j) = http_json(w.addr, "GET", &taps_path(&w.call_a), OPS, None).await;
    assert_eq!(j["taps"].as_array().expect("list").len(), 2);

    // Every request audited, the key in none of it.
    let audit = std::fs::read_to_string(&w.audit_path).expect("audit");
    assert!(!audit.contains(&KEY[7..]), "key in the audit log");
    let lines = audit_lines(&w.audit_path);
    let starts: Vec<_> = lines
        .iter()
        .filter(|l| l["method"] == "POST" && l["status"] == 201)
        .collect();
    assert_eq!(starts.len(), 3);
    assert!(starts
        .iter()
        .all(|l| l["call"] == w.call_a.as_str() && l["tenant"] == "a"));
    let stop = lines
        .iter()
        .find(|l| l["method"] == "DELETE" && l["status"] == 204)
        .expect("stop audited");
    assert_eq!(stop["path"], format!("/v1/taps/{tap_id}"));
    assert_eq!(stop["call"], w.call_a.as_str());
    assert_eq!(stop["tenant"], "a");
    w.handle.shutdown().await;
}

#[tokio::test]
async fn recorders_reach_only_their_tenant_and_viewers_only_read() {
    let w = tap_fixture("taps-roles", true).await;
    // Recorder of b: tenant a's call is no call.
    let (st, _) = http_json(
        w.addr,
        "POST",
        &taps_path(&w.call_a),
        REC_B,
        Some(SRTP_BOTH),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = http_json(w.addr, "GET", &taps_path(&w.call_a), REC_B, None).await;
    assert_eq!(st, 404);
    // Recorder of a: its own call yes, b's no.
    let (st, j) = http_json(
        w.addr,
        "POST",
        &taps_path(&w.call_a),
        REC_A,
        Some(RTP_CALLER),
    )
    .await;
    assert_eq!(st, 201, "{j}");
    let tap_a = j["tap_id"].as_str().expect("id").to_string();
    let (st, _) = http_json(
        w.addr,
        "POST",
        &taps_path(&w.call_b),
        REC_A,
        Some(RTP_CALLER),
    )
    .await;
    assert_eq!(st, 404);
    // b's recorder cannot stop a's tap either, and it keeps running.
    let (st, _) = http_json(w.addr, "DELETE", &format!("/v1/taps/{tap_a}"), REC_B, None).await;
    assert_eq!(st, 404);
    assert_eq!(w.fake.taps.lock().expect("lock").len(), 1);
    // Viewers: 403 to start or stop, the list is fine.
    let (st, j) = http_json(
        w.addr,
        "POST",
        &taps_path(&w.call_a),
        VIEW_A,
        Some(SRTP_BOTH),
    )
    .await;
    assert_eq!(st, 403, "{j}");
    let (st, _) = http_json(w.addr, "DELETE", &format!("/v1/taps/{tap_a}"), VIEW_A, None).await;
    assert_eq!(st, 403);
    let (st, j) = http_json(w.addr, "GET", &taps_path(&w.call_a), VIEW_A, None).await;
    assert_eq!(st, 200);
    assert_eq!(j["taps"].as_array().expect("list").len(), 1);
    let (st, _) = http_json(w.addr, "GET", &taps_path(&w.call_a), VIEW_B, None).await;
    assert_eq!(st, 404);
    // Recorder of a stops its tap.
    let (st, _) = http_json(w.addr, "DELETE", &format!("/v1/taps/{tap_a}"), REC_A, None).await;
    assert_eq!(st, 204);
    assert!(w.fake.taps.lock().expect("lock").is_empty());
    w.handle.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_clear_400s_and_unknowns_404_or_409() {
    let w = tap_fixture("taps-bad", true).await;
    let path = taps_path(&w.call_a);
    for (body, needle) in [
        ("not json", "expected"),
        (r#"{"legs":"both","transport":"rtp"}"#, "destination"),
        (
            r#"{"legs":"all","transport":"rtp","destination":"127.0.0.1:1"}"#,
            "legs",
        ),
        (
            r#"{"legs":"both","transport":"udp","destination":"127.0.0.1:1"}"#,
            "transport",
        ),
        (
            r#"{"legs":"both","transport":"rtp","suite":"AES_CM_128_HMAC_SHA1_80","destination":"127.0.0.1:1"}"#,
            "suite",
        ),
        (
            r#"{"legs":"both","transport":"srtp","suite":"AEAD_AES_128_GCM","destination":"127.0.0.1:1"}"#,
            "suite",
        ),
        (
            r#"{"legs":"both","transport":"rtp","destination":"127.0.0.1"}"#,
            "host:port",
        ),
        (
            r#"{"legs":"both","transport":"rtp","destination":"127.0.0.1:0"}"#,
            "port",
        ),
        (
            r#"{"legs":"both","transport":"rtp","destination":"0.0.0.0:5000"}"#,
            "unicast",
        ),
        (
            r#"{"legs":"both","transport":"rtp","destination":"127.0.0.1:1","extra":1}"#,
            "extra",
        ),
    ] {
        let (st, j) = http_json(w.addr, "POST", &path, OPS, Some(body)).await;
        assert_eq!(st, 400, "{body}: {j}");
        let msg = j["error"].as_str().expect("error message");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    assert!(w.fake.taps.lock().expect("lock").is_empty());
    // A call without media yet; a call that does not exist; a tap that does not exist.
    let (st, j) = http_json(
        w.addr,
        "POST",
        &taps_path(&w.call_a_setup),
        OPS,
        Some(SRTP_BOTH),
    )
    .await;
    assert_eq!(st, 409, "{j}");
    let (st, j) = http_json(w.addr, "GET", &taps_path(&w.call_a_setup), OPS, None).await;
    assert_eq!((st, j["taps"].as_array().map(Vec::len)), (200, Some(0)));
    let (st, _) = http_json(
        w.addr,
        "POST",
        "/v1/calls/0000000000000000/taps",
        OPS,
        Some(SRTP_BOTH),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = http_json(w.addr, "DELETE", "/v1/taps/00000000000000ff", OPS, None).await;
    assert_eq!(st, 404);
    let (st, _) = http_json(w.addr, "DELETE", "/v1/taps/not-a-tap", OPS, None).await;
    assert_eq!(st, 404);
    w.handle.shutdown().await;
}

#[tokio::test]
async fn without_a_media_relay_taps_are_not_implemented() {
    let w = tap_fixture("taps-none", false).await;
    let (st, j) = http_json(w.addr, "POST", &taps_path(&w.call_a), OPS, Some(SRTP_BOTH)).await;
    assert_eq!(st, 501, "{j}");
    let (st, _) = http_json(w.addr, "GET", &taps_path(&w.call_a), REC_A, None).await;
    assert_eq!(st, 501);
    let (st, _) = http_json(w.addr, "DELETE", "/v1/taps/00000000000000ff", OPS, None).await;
    assert_eq!(st, 501);
    // Viewers are refused before anything else.
    let (st, _) = http_json(
        w.addr,
        "POST",
        &taps_path(&w.call_a),
        VIEW_A,
        Some(SRTP_BOTH),
    )
    .await;
    assert_eq!(st, 403);
    w.handle.shutdown().await;
}
