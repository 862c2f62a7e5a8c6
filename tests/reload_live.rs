//! SIGHUP applies routes and recognition live in the real binary: after the config moves a
//! tenant's route to another target and changes how the tenant is recognised, new calls
//! follow the new config while a call set up before the reload goes on to its own target;
//! the log names each changed key (applied ones and the one that needs a restart). The
//! admin plane's `PUT /v1/log-level` changes what is logged, both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sbc_sip::message::{Method, SipMessage};
use sbc_testkit::process::{Signal, Spawned};
use sbc_testkit::*;

const OPS: &str = "ops-reload-3c2b1a09f8e7d6c5";

/// Long enough for a reload on a busy host; every wait is bounded by it.
const RELOAD_WITHIN: Duration = Duration::from_secs(10);

fn config(world: &World, recognition: &str, callee: SocketAddr, sip: &str) -> String {
    format!(
        "[media]\nenabled = false\n[sip]\n{sip}\n{LOOPBACK_FLOOD_GUARD}\
[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n\
[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n{}\n{}",
        world.dir.join("audit.log"),
        sbc_admin::token_sha256_hex(OPS),
        world.listener(""),
        world.tenant("acme", recognition, "", callee),
    )
}

fn is_method(method: Method) -> impl Fn(&SipMessage) -> bool {
    move |m| m.method() == Some(&method)
}

fn is_status(code: u16) -> impl Fn(&SipMessage) -> bool {
    move |m| m.status() == Some(code)
}

#[tokio::test]
async fn sighup_moves_new_calls_to_the_new_target_and_recognition_and_keeps_running_calls() {
    let world = World::new("reload-live");
    let (old_target, new_target) = (
        Callee::new(&world.callee_leaf).await,
        Callee::new(&world.callee_leaf).await,
    );
    let file = world.dir.join("sbc-edge.toml");
    let by_source = "source_cidrs = [\"127.0.0.0/8\"]";
    std::fs::write(&file, config(&world, by_source, old_target.addr, "")).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let sip = gw.printed.sip;

    // A call before the reload: recognised by source, routed to the old target.
    let mut caller = Peer::connect(sip, &world.gw_ca.pem, None).await;
    caller
        .send(&invite("+15551234", "before@platform", "z9hG4bKb1", "atag"))
        .await;
    let mut old_leg = old_target.accept().await;
    let out_inv = old_leg.recv_where(is_method(Method::Invite)).await;
    old_leg.send(&answer(&out_inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    let to = ok.header("to").unwrap().to_string();
    let from = "\"Alice\" <sips:alice@platform.example>;tag=atag";
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@127.0.0.1",
            "z9hG4bKb2",
            from,
            &to,
            "before@platform",
            1,
        ))
        .await;
    old_leg.recv_where(is_method(Method::Ack)).await;

    // Reload: the tenant is now recognised by SNI only and routed to the new target; T1
    // changes too (it needs a restart).
    std::fs::write(
        &file,
        config(
            &world,
            "sni = [\"localhost\"]",
            new_target.addr,
            "t1_ms = 250",
        ),
    )
    .unwrap();
    gw.signal(Signal::SIGHUP);
    gw.logged(&["config_reloaded"], RELOAD_WITHIN).await;

    // Recognition: a new connection without SNI (IP name) from the same source is no
    // longer the tenant's.
    let mut stranger = Peer::try_connect(sip, &world.gw_ca.pem, None, "127.0.0.1")
        .await
        .expect("TLS to the gateway");
    stranger
        .send(&invite("+15551234", "nosni@platform", "z9hG4bKc1", "ctag"))
        .await;
    let refused = stranger
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(refused.status(), Some(403), "unrecognised after the reload");

    // Routes: a new call (SNI localhost) goes to the new target, none to the old one.
    let mut caller2 = Peer::connect(sip, &world.gw_ca.pem, None).await;
    caller2
        .send(&invite("+15559999", "after@platform", "z9hG4bKd1", "dtag"))
        .await;
    let mut new_leg = new_target.accept().await;
    let out_inv2 = new_leg.recv_where(is_method(Method::Invite)).await;
    assert!(
        out_inv2
            .request_uri()
            .unwrap()
            .contains(&new_target.addr.to_string()),
        "{:?}",
        out_inv2.request_uri()
    );
    assert!(old_leg
        .recv_within(Duration::from_millis(300))
        .await
        .is_none());
    assert!(
        old_target
            .no_connection_within(Duration::from_millis(300))
            .await
    );
    new_leg.send(&answer(&out_inv2, 486, "etag")).await;
    assert_eq!(caller2.recv_where(is_status(486)).await.status(), Some(486));

    // The running call was not dropped: its BYE reaches the old target on its connection.
    caller
        .send(&in_dialog(
            "BYE",
            "sips:sbc@127.0.0.1",
            "z9hG4bKb3",
            from,
            &to,
            "before@platform",
            2,
        ))
        .await;
    let bye = old_leg.recv_where(is_method(Method::Bye)).await;
    old_leg.send(&answer(&bye, 200, "btag")).await;
    assert_eq!(caller.recv_where(is_status(200)).await.status(), Some(200));

    // Each changed key by name: applied at info, the restart one at warn with why.
    for key in [
        "tenants.acme.recognition.sni",
        "tenants.acme.recognition.source_cidrs",
        "tenants.acme.routes",
    ] {
        let lines = gw.lines_with(&["config_key_applied", &format!("key={key}")]);
        assert_eq!(lines.len(), 1, "{key}:\n{}", gw.logs());
        assert!(lines[0].contains("INFO"), "{}", lines[0]);
    }
    let t1 = gw.lines_with(&["config_key_not_applied", "key=sip.t1_ms"]);
    assert_eq!(t1.len(), 1, "{}", gw.logs());
    assert!(
        t1[0].contains("WARN") && t1[0].contains("timers"),
        "{}",
        t1[0]
    );
    assert!(
        gw.lines_with(&["config_key_", "listeners"]).is_empty(),
        "only changed keys are named:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn admin_log_level_changes_what_is_logged() {
    let world = World::new("reload-log-level");
    let file = world.dir.join("sbc-edge.toml");
    let by_source = "source_cidrs = [\"127.0.0.0/8\"]";
    let callee: SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(&file, config(&world, by_source, callee, "")).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let admin = gw.printed.admin;
    let level = async |filter: &str| {
        http(
            admin,
            "PUT",
            "/v1/log-level",
            Some(OPS),
            &format!("{{\"level\":\"{filter}\"}}"),
        )
        .await
    };

    // At warn: a reload's warn lines are logged, its info lines are not.
    let (status, body) = level("warn").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http(admin, "GET", "/v1/log-level", Some(OPS), "").await,
        (200, "{\"level\":\"warn\"}".to_string())
    );
    gw.logged(&["log_level_changed", "to=warn"], RELOAD_WITHIN)
        .await;
    std::fs::write(&file, config(&world, by_source, callee, "t1_ms = 250")).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.logged(&["config_key_not_applied", "key=sip.t1_ms"], RELOAD_WITHIN)
        .await;
    assert!(
        gw.lines_with(&["config_reloaded"]).is_empty(),
        "an info line logged at warn:\n{}",
        gw.logs()
    );

    // Back to info: the next reload's info line shows.
    assert_eq!(level("info").await.0, 200);
    std::fs::write(&file, config(&world, by_source, callee, "t1_ms = 300")).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.logged(&["config_reloaded"], RELOAD_WITHIN).await;
    assert!(!gw.logs().contains(OPS), "a token in the logs");
}
