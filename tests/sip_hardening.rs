//! Issue 12's findings over real TLS on loopback: what a sloppy or hostile peer could do
//! to the gateway before, and what it gets now. The same flows run on the B2BUA's virtual
//! clock in `crates/sbc-sip/tests/b2bua_harness.rs`; these prove the wiring end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sbc_core::tenant::TenantId;
use sbc_sip::message::{Method, SipMessage};
use sbc_testkit::*;

/// T1 for these tests: 64·T1 (the 2xx-without-ACK limit) is then 1.28 s.
const T1_MS: u64 = 20;

async fn gateway(tag: &str) -> (World, sbc_sip::server::ServerHandle, Callee) {
    // The call rate is lifted: the pending-INVITE quota (50) is what is under test.
    let limits = "[tenants.limits]\ncalls_per_second = 1000.0\ncall_burst = 1000";
    loopback_gateway(tag, "acme", "", &format!("[sip]\nt1_ms = {T1_MS}"), limits).await
}

fn text_of(m: &SipMessage) -> String {
    String::from_utf8_lossy(&m.to_bytes()).into_owned()
}

fn edited(m: &SipMessage, from: &str, to: &str) -> SipMessage {
    let text = text_of(m).replace(from, to);
    SipMessage::parse(text.as_bytes()).expect("edited message parses")
}

#[tokio::test]
async fn invites_without_branch_are_served_and_never_lock_the_tenant_out() {
    // Finding 1: each got 100 then 400 and kept its pending-INVITE slot; after 50 the
    // tenant was refused 503 until restart. RFC 2543 Vias are served now.
    let (world, gw, callee) = gateway("nobranch").await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let mut down = None;
    for i in 0..55 {
        let inv = invite("+1555", &format!("nb-{i}@platform"), "x", "atag");
        let inv = edited(&inv, ";branch=x", "");
        caller.send(&inv).await;
        if down.is_none() {
            down = Some(callee.accept().await);
        }
        let c = down.as_mut().unwrap();
        let got = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
        c.send(&answer(&got, 486, "btag")).await;
        let last = caller
            .recv_where(|m| m.status().is_some_and(|s| s >= 200))
            .await;
        assert_eq!(last.status(), Some(486), "call {i}");
    }
    let usage = gw.usage(&TenantId::from("acme")).unwrap();
    assert_eq!((usage.active_calls, usage.pending_invites), (0, 0));
}

#[tokio::test]
async fn a_2xx_never_acked_ends_with_bye_on_both_legs() {
    // Finding 8: such a call stayed until restart (or the media timeout).
    let (world, gw, callee) = gateway("noack").await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&invite("+1555", "noack@platform", "z9hG4bKna", "atag"))
        .await;
    let mut c = callee.accept().await;
    let got = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    c.send(&answer(&got, 200, "btag")).await;
    caller.recv_where(|m| m.status() == Some(200)).await;
    // No ACK. The 2xx is retransmitted, then both legs get BYE within 64·T1.
    let again = caller
        .recv_where(|m| m.status() == Some(200) || m.method() == Some(&Method::Bye))
        .await;
    assert_eq!(again.status(), Some(200), "the 2xx is retransmitted first");
    let bye = caller
        .recv_where(|m| m.method() == Some(&Method::Bye))
        .await;
    assert!(bye.header("reason").is_some_and(|r| r.contains("no ACK")));
    c.recv_where(|m| m.method() == Some(&Method::Bye)).await;
    let usage = gw.usage(&TenantId::from("acme")).unwrap();
    assert_eq!(usage.active_calls, 0, "the call's slot is free");
}

#[tokio::test]
async fn bodies_and_headers_outside_the_policy_do_not_cross() {
    // Findings 2 and 3: an unknown body crossed raw (with the caller's addresses), and
    // every header outside a short deny-list crossed verbatim.
    let (world, gw, callee) = gateway("policy").await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let inv = invite("+1555", "body@platform", "z9hG4bKb1", "atag");
    let odd = edited(
        &inv,
        "Content-Type: application/sdp",
        "Content-Type: application/x-vendor",
    );
    caller.send(&odd).await;
    let refused = caller
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(refused.status(), Some(415));
    assert!(refused
        .header("accept")
        .is_some_and(|a| a.contains("application/sdp")));
    assert!(
        callee
            .no_connection_within(Duration::from_millis(300))
            .await,
        "nothing was forwarded"
    );

    let leaky = edited(
        &invite("+1555", "hdr@platform", "z9hG4bKh1", "atag"),
        "Max-Forwards: 69\r\n",
        "Max-Forwards: 69\r\nP-Asserted-Identity: <sip:+15550001@core.platform.internal>\r\nDiversion: <sip:+1555@10.20.0.9>;reason=unconditional\r\nX-Internal-Route: 10.20.0.9:5060\r\nWarning: 399 sbc-b.platform.internal \"x\"\r\n",
    );
    caller.send(&leaky).await;
    let mut c = callee.accept().await;
    let got = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    let text = text_of(&got);
    for leak in ["platform.internal", "10.20.0.9", "PlatformUA", "X-Internal"] {
        assert!(!text.contains(leak), "{leak} crossed:\n{text}");
    }
}

#[tokio::test]
async fn scheme_method_and_extension_faults_are_answered_before_routing() {
    // Findings 4 and 7: OPTIONS to tel: got 200, an unknown method 405, an unknown
    // Require tag was ignored and the call routed.
    let (world, gw, callee) = gateway("faults").await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let opts = sip(&options_text("z9hG4bKo1"));
    let tel = SipMessage::parse(
        text_of(&opts)
            .replacen(opts.request_uri().unwrap(), "tel:+15551234", 1)
            .as_bytes(),
    )
    .unwrap();
    caller.send(&tel).await;
    assert_eq!(caller.recv().await.status(), Some(416));
    let foo = edited(&sip(&options_text("z9hG4bKo2")), "OPTIONS", "FOO");
    caller.send(&foo).await;
    assert_eq!(caller.recv().await.status(), Some(501));
    let inv = invite("+1555", "req@platform", "z9hG4bKr1", "atag");
    let req = edited(
        &inv,
        "Max-Forwards: 69\r\n",
        "Max-Forwards: 69\r\nRequire: foo\r\n",
    );
    caller.send(&req).await;
    let r = caller.recv().await;
    assert_eq!(r.status(), Some(420));
    assert_eq!(r.header("unsupported"), Some("foo"));
    let raw_at = edited(&inv, "INVITE sips:+1555@", "INVITE sips:+1@555@");
    let raw_at = edited(&raw_at, "z9hG4bKr1", "z9hG4bKr2");
    caller.send(&raw_at).await;
    let r = caller.recv().await;
    assert_eq!(r.status(), Some(400));
    assert!(
        r.reason().is_some_and(|p| p.contains("Request-URI")),
        "{:?}",
        r.reason()
    );
    assert!(
        callee
            .no_connection_within(Duration::from_millis(300))
            .await
    );
}
