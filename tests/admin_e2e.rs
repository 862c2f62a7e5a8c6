//! The admin plane wired to the real SIP side: a call through the gateway appears in
//! `GET /v1/calls` (tenant-scoped), usage shows it against the quota, `/metrics` carries
//! the SIP counters, and `POST /v1/drain` makes `/readyz` 503 and new INVITEs 503 while
//! the running call goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use sbc_admin::{AdminConfig, AdminState, AuditLog};
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_sip::message::Method;
use sbc_sip::server::Hooks;
use sbc_testkit::*;

#[tokio::test]
async fn admin_plane_sees_calls_usage_metrics_and_drains() {
    let prometheus = sbc_admin::install_prometheus().unwrap();
    let world = World::new("admin-e2e");
    let callee = Callee::new(&world.callee_leaf).await;
    let op = "operator-token-0123456789";
    let viewer_other = "viewer-other-0123456789";
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n[[admin.tokens]]\nid = \"other\"\nsha256 = \"{}\"\nrole = \"viewer\"\ntenant = \"other\"\n{}\n{}\n{}",
        sbc_admin::token_sha256_hex(op),
        sbc_admin::token_sha256_hex(viewer_other),
        world.listener(""),
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr),
        world.tenant("other", "sni = [\"other.example\"]", "", callee.addr),
    );
    let cfg = Arc::new(world.config(&text));
    let admin_cfg =
        AdminConfig::from_toml_value(cfg.admin_section.clone().unwrap(), &cfg.base_dir).unwrap();
    let registry = Arc::new(CallRegistry::new());
    let drain = Arc::new(DrainState::new());
    let gw = sbc_sip::server::start_with(
        cfg.clone(),
        Hooks {
            registry: Some(registry.clone()),
            drain: Some(drain.clone()),
            media: None,
            cluster: None,
            recording: None,
            audit: None,
            replica: None,
            media_takeover: None,
        },
    )
    .await
    .unwrap();
    let audit_path = world.dir.join("audit.log");
    let admin = sbc_admin::serve(
        admin_cfg,
        AdminState {
            registry,
            usage: gw.usage_source(),
            drain: drain.clone(),
            prometheus,
            tenants: cfg.tenants.iter().map(|t| t.id.clone()).collect(),
            audit: Arc::new(AuditLog::open(&audit_path).unwrap()),
            taps: None,
            recordings: None,
        },
    )
    .await
    .unwrap();
    drain.set_ready(true);
    let a = admin.local_addr();
    assert_eq!(http(a, "GET", "/readyz", None, "").await.0, 200);

    // One call, answered.
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&invite(
            "+15557654321",
            "adm-1@platform",
            "z9hG4bKadm1",
            "atag",
        ))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    c.send(&answer(&inv, 200, "btag")).await;
    caller.recv_where(|m| m.status() == Some(200)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, body) = http(a, "GET", "/v1/calls", Some(op), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"tenant\":\"demo\"") && body.contains("+15557654321"),
        "{body}"
    );
    assert!(body.contains("established"), "{body}");
    assert!(
        !body.contains("adm-1@platform"),
        "SIP Call-IDs never shown: {body}"
    );
    let (status, body) = http(a, "GET", "/v1/calls", Some(viewer_other), "").await;
    assert_eq!(status, 200);
    assert!(
        !body.contains("demo"),
        "another tenant's viewer sees nothing of demo: {body}"
    );
    let (status, body) = http(a, "GET", "/v1/tenants/demo/usage", Some(op), "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"active_calls\":1"), "{body}");
    let (_, metrics) = http(a, "GET", "/metrics", None, "").await;
    assert!(
        metrics.contains("sbc_sip_calls_answered_total{tenant=\"demo\"} 1"),
        "{metrics}"
    );

    // Drain: readiness goes, new calls get 503, the running call stays.
    assert_eq!(
        http(a, "POST", "/v1/drain", Some(viewer_other), "").await.0,
        403
    );
    assert_eq!(http(a, "POST", "/v1/drain", Some(op), "").await.0, 200);
    assert_eq!(http(a, "GET", "/readyz", None, "").await.0, 503);
    let mut second = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    second
        .send(&invite(
            "+15550000000",
            "adm-2@platform",
            "z9hG4bKadm2",
            "atag",
        ))
        .await;
    let r = second
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(r.status(), Some(503));
    assert!(r.header("reason").unwrap().contains("draining"));
    assert_eq!(gw.stats().active_calls, 1, "the running call goes on");

    admin.shutdown().await;
    gw.shutdown().await;
    let lines = sbc_admin::verify_audit(&audit_path).unwrap();
    assert!(
        lines >= 4,
        "reads of call data and the drain are audited: {lines}"
    );
}
