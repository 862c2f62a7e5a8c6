//! The admin API over real HTTP on loopback: every endpoint, every auth case, redaction,
//! the audit chain.

use std::io::Write;
use std::sync::Arc;

use sbc_admin::{AdminError, AuditLog};
use sbc_core::reload::LogLevelControl;
use sbc_core::tenant::TenantId;
use sbc_testkit::admin::*;
use sbc_testkit::http::*;

#[tokio::test]
async fn probes_and_metrics_need_no_token() {
    let f = start("probes", config(false)).await;
    let r = request(f.addr, "GET", "/healthz", None).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = request(f.addr, "GET", "/readyz", None).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));

    // Make a counted request, then scrape.
    let r = request(f.addr, "GET", "/v1/calls", bearer(OPS)).await;
    assert_eq!(r.status, 200);
    let m = request(f.addr, "GET", "/metrics", None).await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = m.text();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("sbc_admin_requests_total{")
                && l.contains("endpoint=\"/v1/calls\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{text}"));
    let value: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("counter value");
    assert!(value >= 1.0, "{line}");
    // No secret, call id or number in metrics.
    for secret in [OPS, VIEW_A, f.call_a.as_str(), CALLER_A, SIP_CALL_ID_A] {
        assert!(!text.contains(secret), "metrics leak {secret}");
    }
    // A second global recorder cannot be installed.
    assert!(matches!(
        sbc_admin::install_prometheus(),
        Err(AdminError::Prometheus(_))
    ));
    // Unknown path: 404 without a token.
    let r = request(f.addr, "GET", "/nope", None).await;
    assert_eq!(r.status, 404);
    f.handle.shutdown().await;
}

#[tokio::test]
async fn readyz_follows_the_ready_flag() {
    let f = start("ready", config(false)).await;
    f.drain.set_ready(false);
    let r = request(f.addr, "GET", "/readyz", None).await;
    assert_eq!((r.status, r.text().as_str()), (503, "not ready\n"));
    f.drain.set_ready(true);
    let r = request(f.addr, "GET", "/readyz", None).await;
    assert_eq!(r.status, 200);
    f.handle.shutdown().await;
}

#[tokio::test]
async fn authentication() {
    let f = start("auth", config(false)).await;
    for (auth, what) in [
        (None, "no token"),
        (bearer("not-a-token"), "unknown token"),
        (bearer(&OPS[..OPS.len() - 1]), "truncated token"),
        (Some(format!("Basic {OPS}")), "wrong scheme"),
        (Some("Bearer".to_string()), "empty bearer"),
    ] {
        for (method, path) in [
            ("GET", "/v1/calls"),
            ("GET", "/v1/calls/0123456789abcdef"),
            ("GET", "/v1/tenants/a/usage"),
            ("POST", "/v1/drain"),
        ] {
            let r = request(f.addr, method, path, auth.clone()).await;
            assert_eq!(r.status, 401, "{what} {method} {path}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"sbc-admin\""),
                "{what}"
            );
            assert!(r.json()["error"].is_string());
        }
    }
    assert!(!f.drain.is_draining(), "no unauthenticated drain");
    // Scheme is case-insensitive.
    let r = request(f.addr, "GET", "/v1/calls", Some(format!("bearer {VIEW_A}"))).await;
    assert_eq!(r.status, 200);
    f.handle.shutdown().await;
}

#[tokio::test]
async fn call_list_and_scoping() {
    let f = start("calls", config(false)).await;
    let r = request(f.addr, "GET", "/v1/calls", bearer(OPS)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    let calls = body["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2);
    // Oldest first: a's call started in 2023.
    let a = &calls[0];
    assert_eq!(a["id"], f.call_a.as_str());
    assert_eq!(a["tenant"], "a");
    assert_eq!(a["start"], "2023-11-14T22:13:20.000Z");
    assert_eq!(a["state"], "established");
    assert_eq!(a["caller"], CALLER_A);
    assert_eq!(a["callee"], CALLEE_A);
    assert_eq!(
        a["legs"],
        serde_json::json!([
            {"direction": "inbound", "packets_received": 1500, "packets_sent": 1490, "packets_lost": 3},
            {"direction": "outbound", "packets_received": 0, "packets_sent": 0, "packets_lost": 0},
        ])
    );
    assert_eq!(calls[1]["id"], f.call_b.as_str());
    assert_eq!(calls[1]["tenant"], "b");
    assert_eq!(calls[1]["state"], "setup");
    // SIP Call-IDs never leave the registry.
    let text = r.text();
    assert!(!text.contains(SIP_CALL_ID_A) && !text.contains(SIP_CALL_ID_A_OUT));
    assert!(!text.contains("b-sip-call-id"));

    // Operator filter.
    let r = request(f.addr, "GET", "/v1/calls?tenant=b", bearer(OPS)).await;
    let body = r.json();
    assert_eq!(body["calls"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["calls"][0]["tenant"], "b");
    let r = request(f.addr, "GET", "/v1/calls?tenant=zzz", bearer(OPS)).await;
    assert_eq!(r.status, 404);
    let r = request(f.addr, "GET", "/v1/calls?bogus=1", bearer(OPS)).await;
    assert_eq!(r.status, 400);

    // Viewer and recorder of a see a's call only.
    for tok in [VIEW_A, REC_A] {
        let r = request(f.addr, "GET", "/v1/calls", bearer(tok)).await;
        assert_eq!(r.status, 200);
        let body = r.json();
        let calls = body["calls"].as_array().expect("calls");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["id"], f.call_a.as_str());
        assert!(!r.text().contains("+4420"), "b's numbers leak to a");
    }
    let r = request(f.addr, "GET", "/v1/calls?tenant=a", bearer(VIEW_A)).await;
    assert_eq!(r.json()["calls"].as_array().map(Vec::len), Some(1));
    // Asking for another tenant's list looks like asking for a tenant that does not exist.
    let other = request(f.addr, "GET", "/v1/calls?tenant=b", bearer(VIEW_A)).await;
    let missing = request(f.addr, "GET", "/v1/calls?tenant=zzz", bearer(VIEW_A)).await;
    assert_eq!(other.status, 404);
    assert_eq!(other.body, missing.body);
    let r = request(f.addr, "GET", "/v1/calls", bearer(VIEW_B)).await;
    let body = r.json();
    assert_eq!(body["calls"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["calls"][0]["id"], f.call_b.as_str());
    f.handle.shutdown().await;
}

#[tokio::test]
async fn single_call_and_no_existence_leak() {
    let f = start("call", config(false)).await;
    let path_a = format!("/v1/calls/{}", f.call_a);
    let r = request(f.addr, "GET", &path_a, bearer(OPS)).await;
    assert_eq!(r.status, 200);
    let c = r.json();
    assert_eq!(c["id"], f.call_a.as_str());
    assert_eq!(c["tenant"], "a");
    assert_eq!(c["caller"], CALLER_A);
    assert_eq!(c["legs"][0]["packets_lost"], 3);
    let r = request(f.addr, "GET", &path_a, bearer(VIEW_A)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], f.call_a.as_str());

    // Viewer of b asking for a's call: the same 404 as for a call that does not exist.
    let other = request(f.addr, "GET", &path_a, bearer(VIEW_B)).await;
    let missing = request(f.addr, "GET", "/v1/calls/0000000000000000", bearer(VIEW_B)).await;
    assert_eq!(other.status, 404);
    assert_eq!(missing.status, 404);
    assert_eq!(other.body, missing.body);
    assert_eq!(other.json()["error"], "no such call");
    let long = format!("/v1/calls/{}", "x".repeat(200));
    assert_eq!(request(f.addr, "GET", &long, bearer(OPS)).await.status, 404);

    // A removed call is gone.
    assert!(f.registry.remove(&f.call_a).is_some());
    assert_eq!(
        request(f.addr, "GET", &path_a, bearer(OPS)).await.status,
        404
    );
    f.handle.shutdown().await;
}

#[tokio::test]
async fn usage_against_limits() {
    let f = start("usage", config(false)).await;
    let r = request(f.addr, "GET", "/v1/tenants/a/usage", bearer(VIEW_A)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "tenant": "a",
            "active_calls": 1,
            "pending_invites": 1,
            "admitted_total": 1,
            "refused_total": 0,
            "limits": {
                "calls_per_second": 5.0,
                "call_burst": 10,
                "max_concurrent_calls": 50,
                "max_pending_invites": 7,
                "requests_per_second_per_connection": 100.0,
            },
        })
    );
    let r = request(f.addr, "GET", "/v1/tenants/b/usage", bearer(OPS)).await;
    assert_eq!(r.status, 200);
    let u = r.json();
    assert_eq!(u["tenant"], "b");
    assert_eq!(u["active_calls"], 0);
    assert_eq!(u["limits"]["max_concurrent_calls"], 8);

    let other = request(f.addr, "GET", "/v1/tenants/b/usage", bearer(VIEW_A)).await;
    let missing = request(f.addr, "GET", "/v1/tenants/zzz/usage", bearer(VIEW_A)).await;
    assert_eq!(other.status, 404);
    assert_eq!(other.body, missing.body);
    assert_eq!(
        request(f.addr, "GET", "/v1/tenants/zzz/usage", bearer(OPS))
            .await
            .status,
        404
    );
    // Usage is live: releasing the admitted call shows.
    let Fixture {
        handle,
        admitted,
        addr,
        ..
    } = f;
    drop(admitted);
    let r = request(addr, "GET", "/v1/tenants/a/usage", bearer(REC_A)).await;
    assert_eq!(r.json()["active_calls"], 0);
    handle.shutdown().await;
}

#[tokio::test]
async fn drain_is_for_operators() {
    let f = start("drain", config(false)).await;
    for tok in [VIEW_A, VIEW_B, REC_A] {
        let r = request(f.addr, "POST", "/v1/drain", bearer(tok)).await;
        assert_eq!(r.status, 403, "{tok}");
        assert_eq!(r.json()["error"], "drain needs an operator token");
    }
    assert!(!f.drain.is_draining());
    assert_eq!(request(f.addr, "GET", "/readyz", None).await.status, 200);

    let r = request(f.addr, "GET", "/v1/drain", bearer(OPS)).await;
    assert_eq!(r.status, 405);
    assert!(!f.drain.is_draining());

    let r = request(f.addr, "POST", "/v1/drain", bearer(OPS)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"draining": true, "already_draining": false})
    );
    assert!(f.drain.is_draining());
    let r = request(f.addr, "GET", "/readyz", None).await;
    assert_eq!((r.status, r.text().as_str()), (503, "draining\n"));
    let r = request(f.addr, "POST", "/v1/drain", bearer(OPS)).await;
    assert_eq!(r.json()["already_draining"], true);
    // Health stays green while draining: the process is alive.
    assert_eq!(request(f.addr, "GET", "/healthz", None).await.status, 200);
    f.handle.shutdown().await;
}

/// A log filter held in memory, standing in for `main`'s subscriber handle.
struct FakeLevel(std::sync::Mutex<String>);

impl sbc_core::reload::LogLevelControl for FakeLevel {
    fn current(&self) -> String {
        self.0.lock().expect("not poisoned").clone()
    }
    fn set(&self, filter: &str) -> Result<(), String> {
        *self.0.lock().expect("not poisoned") = filter.to_string();
        Ok(())
    }
}

#[tokio::test]
async fn log_level_is_read_by_any_token_and_changed_by_operators_audited() {
    let f = start("log-level", config(false)).await;
    let put = |tok: &'static str, body: &'static str| {
        let addr = f.addr;
        async move {
            let auth = format!("Bearer {tok}");
            request_with(
                addr,
                "PUT",
                "/v1/log-level",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                Some(body),
            )
            .await
        }
    };
    // Nothing wired: 501.
    let r = request(f.addr, "GET", "/v1/log-level", bearer(VIEW_A)).await;
    assert_eq!(r.status, 501);
    let level = Arc::new(FakeLevel(std::sync::Mutex::new("info".into())));
    f.handle.set_log_level_control(level.clone());
    let r = request(f.addr, "GET", "/v1/log-level", bearer(VIEW_A)).await;
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"level": "info"}))
    );
    for tok in [VIEW_A, REC_A] {
        let r = put(tok, r#"{"level":"debug"}"#).await;
        assert_eq!(r.status, 403, "{tok}");
    }
    assert_eq!(level.current(), "info");
    for bad in [
        r#"{"level":"debug; rm"}"#,
        r#"{"lvl":"debug"}"#,
        "debug",
        r#"{"level":""}"#,
    ] {
        let r = put(OPS, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(level.current(), "info");
    let r = put(OPS, r#"{"level":"sbc_sip=debug,info"}"#).await;
    assert_eq!(
        (r.status, r.json()),
        (
            200,
            serde_json::json!({"level": "sbc_sip=debug,info", "previous": "info"})
        )
    );
    assert_eq!(level.current(), "sbc_sip=debug,info");
    let puts: Vec<_> = audit_lines(&f.audit_path)
        .into_iter()
        .filter(|l| l["method"] == "PUT" && l["path"] == "/v1/log-level")
        .map(|l| {
            (
                l["token"].as_str().unwrap_or("").to_string(),
                l["status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(puts.len(), 7, "{puts:?}");
    assert_eq!(puts.last(), Some(&("ops".to_string(), Some(200))));
    f.handle.shutdown().await;
}

#[tokio::test]
async fn numbers_are_redacted_when_configured() {
    let f = start("redact", config(true)).await;
    let r = request(f.addr, "GET", "/v1/calls", bearer(OPS)).await;
    let text = r.text();
    let body = r.json();
    assert_eq!(body["calls"][0]["caller"], "+1555****34");
    assert_eq!(body["calls"][0]["callee"], "+1555****43");
    assert_eq!(body["calls"][1]["caller"], "+4420****00");
    assert!(!text.contains(CALLER_A) && !text.contains(CALLEE_A));
    let r = request(
        f.addr,
        "GET",
        &format!("/v1/calls/{}", f.call_a),
        bearer(VIEW_A),
    )
    .await;
    assert_eq!(r.json()["caller"], "+1555****34");
    assert!(!r.text().contains(CALLER_A));
    f.handle.shutdown().await;
}

#[tokio::test]
async fn audit_chain_verifies_and_pins_a_changed_byte() {
    let f = start("audit", config(false)).await;
    let path_a = format!("/v1/calls/{}", f.call_a);
    let reqs: Vec<(&str, String, Option<String>, u16)> = vec![
        ("GET", "/v1/calls".to_string(), bearer(OPS), 200),
        ("GET", path_a.clone(), bearer(VIEW_B), 404),
        ("GET", "/v1/calls".to_string(), None, 401),
        (
            "GET",
            "/v1/calls".to_string(),
            bearer("wrong-token-value"),
            401,
        ),
        ("POST", "/v1/drain".to_string(), bearer(VIEW_A), 403),
        ("GET", "/v1/tenants/a/usage".to_string(), bearer(REC_A), 200),
        ("POST", "/v1/drain".to_string(), bearer(OPS), 200),
    ];
    for (method, path, auth, want) in &reqs {
        let r = request(f.addr, method, path, auth.clone()).await;
        assert_eq!(r.status, *want, "{method} {path}");
    }
    // Probes and metrics are not audited.
    request(f.addr, "GET", "/healthz", None).await;
    request(f.addr, "GET", "/metrics", None).await;

    assert_eq!(sbc_admin::verify_audit(&f.audit_path), Ok(reqs.len()));
    let lines = audit_lines(&f.audit_path);
    assert_eq!(lines.len(), reqs.len());
    for (line, (method, path, _, status)) in lines.iter().zip(&reqs) {
        assert_eq!(line["method"], *method);
        assert_eq!(line["path"], path.as_str());
        assert_eq!(line["status"], *status);
        let time = line["time"].as_str().expect("time");
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
    }
    assert_eq!(lines[0]["prev"], sbc_admin::audit::GENESIS);
    assert_eq!(lines[0]["token"], "ops");
    assert_eq!(lines[0]["role"], "operator");
    assert_eq!(lines[1]["token"], "view-b");
    assert_eq!(lines[1]["token_tenant"], "b");
    assert_eq!(lines[1]["call"], f.call_a.as_str());
    assert_eq!(
        lines[1]["tenant"], "a",
        "operators see whose call was probed"
    );
    assert!(lines[2]["token"].is_null() && lines[2]["role"].is_null());
    assert!(lines[3]["token"].is_null());
    assert_eq!(lines[4]["role"], "viewer");
    assert_eq!(lines[5]["role"], "recorder");
    assert_eq!(lines[5]["tenant"], "a");
    assert_eq!(lines[6]["path"], "/v1/drain");

    // No token text in the log.
    let raw = std::fs::read(&f.audit_path).expect("read");
    let text = String::from_utf8(raw.clone()).expect("utf-8");
    for secret in [OPS, VIEW_A, VIEW_B, REC_A, "wrong-token-value"] {
        assert!(!text.contains(secret), "audit log holds a token");
    }

    // Change one byte inside line 4 (its status 401 -> 402): verification names line 4.
    let line4_start: usize = text.lines().take(3).map(|l| l.len() + 1).sum();
    let at = line4_start + text[line4_start..].find("\"status\":401").expect("line 4") + 11;
    let mut tampered = raw.clone();
    tampered[at] = b'2';
    let copy = f.dir.join("tampered.jsonl");
    std::fs::write(&copy, &tampered).expect("write");
    let err = sbc_admin::verify_audit(&copy).expect_err("tampered");
    assert_eq!(err.line, 4, "{err}");
    assert!(err.to_string().starts_with("line 4: "), "{err}");

    // Delete line 2 entirely: line 2 (formerly 3) no longer chains.
    let without: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&copy, without).expect("write");
    assert_eq!(sbc_admin::verify_audit(&copy).map_err(|e| e.line), Err(2));

    // The live log still verifies and continues after a restart of the writer.
    f.handle.shutdown().await;
    let f2_log = AuditLog::open(&f.audit_path).expect("reopen continues the chain");
    drop(f2_log);
    assert_eq!(sbc_admin::verify_audit(&f.audit_path), Ok(reqs.len()));
}

struct Failing;

impl Write for Failing {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn unaudited_data_is_not_served() {
    let registry = Arc::new(sbc_core::registry::CallRegistry::new());
    let state = sbc_admin::AdminState {
        registry,
        usage: Arc::new(|_: &TenantId| None),
        drain: Arc::new(sbc_core::registry::DrainState::new()),
        prometheus: prometheus(),
        tenants: vec![TenantId::from("a"), TenantId::from("b")],
        audit: Arc::new(AuditLog::to_writer(Box::new(Failing))),
        taps: None,
        recordings: None,
    };
    let mut cfg = config(false);
    cfg.address = "127.0.0.1:0".parse().expect("addr");
    let handle = sbc_admin::serve(cfg, state).await.expect("serve");
    let r = request(handle.local_addr(), "GET", "/v1/calls", bearer(OPS)).await;
    assert_eq!(r.status, 500);
    assert!(r.json().get("calls").is_none());
    assert_eq!(
        request(handle.local_addr(), "GET", "/healthz", None)
            .await
            .status,
        200
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn serve_refuses_tokens_for_unknown_tenants_and_shutdown_closes() {
    let state = |tenants: Vec<TenantId>| sbc_admin::AdminState {
        registry: Arc::new(sbc_core::registry::CallRegistry::new()),
        usage: Arc::new(|_: &TenantId| None),
        drain: Arc::new(sbc_core::registry::DrainState::new()),
        prometheus: prometheus(),
        tenants,
        audit: Arc::new(AuditLog::to_writer(Box::new(std::io::sink()))),
        taps: None,
        recordings: None,
    };
    let mut cfg = config(false);
    cfg.address = "127.0.0.1:0".parse().expect("addr");
    let err = sbc_admin::serve(cfg.clone(), state(vec![TenantId::from("a")]))
        .await
        .expect_err("b unknown");
    assert!(err.to_string().contains("admin.tokens[2].tenant"), "{err}");

    let handle = sbc_admin::serve(cfg, state(vec![TenantId::from("a"), TenantId::from("b")]))
        .await
        .expect("serve");
    let addr = handle.local_addr();
    assert_eq!(request(addr, "GET", "/healthz", None).await.status, 200);
    handle.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[test]
fn openapi_documents_exactly_the_served_paths() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml");
    assert!(spec.starts_with("openapi: 3.0."));
    let documented: Vec<&str> = spec
        .lines()
        .filter(|l| l.starts_with("  /") && l.ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':'))
        .collect();
    assert_eq!(
        documented,
        [
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/calls",
            "/v1/calls/{id}",
            "/v1/tenants/{id}/usage",
            "/v1/drain",
            "/v1/reload",
            "/v1/calls/{id}/taps",
            "/v1/taps/{tap_id}",
            "/v1/calls/{id}/tap/ws",
            "/v1/calls/{id}/recordings",
            "/v1/calls/{id}/recordings/{action}",
            "/v1/log-level",
            "/v1/cluster/takeover",
            "/v1/cluster/standby",
        ]
    );
}
