//! Calls across transports on loopback: TLS outside to UDP inside (with the INVITE
//! retransmitted by timer A until a provisional), a UDP caller whose INVITE is sent twice
//! (one call) and whose 486 is retransmitted by timer G until its ACK, a request over
//! 1300 bytes for a UDP target going over TCP (RFC 3261 §18.1.1), and a call through a
//! plain TCP listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sbc_sip::message::{tag, Method, SipMessage};
use sbc_testkit::*;

fn is_status(code: u16) -> impl Fn(&SipMessage) -> bool {
    move |m| m.status() == Some(code)
}

fn is_method(method: Method) -> impl Fn(&SipMessage) -> bool {
    move |m| m.method() == Some(&method)
}

fn branch(m: &SipMessage) -> String {
    sbc_sip::message::parse_via(m.header("via").unwrap())
        .and_then(|v| v.branch)
        .unwrap()
        .to_string()
}

/// A tenant recognised by loopback source, routed to `target`.
fn tenant_to(target: &str) -> String {
    format!(
        "[[tenants]]\nid = \"demo\"\n[tenants.recognition]\nsource_cidrs = [\"127.0.0.0/8\"]\n[[tenants.routes]]\nprefix = \"\"\ntarget = \"{target}\"\n"
    )
}

fn ack_for(call_id: &str, to: &str, branch: &str) -> SipMessage {
    in_dialog(
        "ACK",
        "sips:sbc@127.0.0.1",
        branch,
        "\"Alice\" <sips:alice@platform.example>;tag=atag",
        to,
        call_id,
        1,
    )
}

#[tokio::test]
async fn tls_outside_to_udp_inside_call_with_timer_a() {
    let world = World::new("udp-inside");
    let uas = UdpPeer::new().await;
    let text = format!(
        "{}\n{}\n{}",
        world.listener(""),
        world.plain_listener("inside", "udp"),
        tenant_to(&format!("sip:{};transport=udp", uas.addr))
    );
    let gw = start_gateway(world.config(&text)).await;
    let gw_udp: SocketAddr = gw.sip_addrs[1];
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;

    caller
        .send(&invite("+15551234", "u-1@platform", "z9hG4bKu1", "atag"))
        .await;
    assert_eq!(caller.recv().await.status(), Some(100));
    let (inv, from) = uas.recv_where(is_method(Method::Invite)).await;
    assert_eq!(from, gw_udp, "sent from the UDP listener's socket");
    let via = inv.header("via").unwrap();
    assert!(
        via.starts_with(&format!("SIP/2.0/UDP {gw_udp};branch=z9hG4bK")),
        "{via}"
    );
    let contact = inv.header("contact").unwrap();
    assert_eq!(contact, format!("<sip:sbc@{gw_udp};transport=udp>"));
    assert!(inv.request_uri().unwrap().starts_with("sip:+15551234@"));
    assert_no_leak(&inv, &["10.88.0.", "u-1@platform"]);

    // Unanswered, timer A sends the INVITE again after T1 (500 ms).
    let (again, _) = uas
        .recv_within(Duration::from_millis(1500))
        .await
        .expect("INVITE retransmitted by timer A");
    assert_eq!(again.method(), Some(&Method::Invite));
    assert_eq!(branch(&again), branch(&inv), "the same transaction");

    // A provisional stops timer A.
    uas.send_to(from, &answer(&inv, 180, "btag")).await;
    caller.recv_where(is_status(180)).await;
    let quiet = uas.recv_within(Duration::from_millis(1200)).await;
    assert!(quiet.is_none(), "no retransmission after 180: {quiet:?}");

    uas.send_to(from, &answer(&inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    let to = ok.header("to").unwrap().to_string();
    caller
        .send(&ack_for("u-1@platform", &to, "z9hG4bKu2"))
        .await;
    let (ack, _) = uas.recv_where(is_method(Method::Ack)).await;
    assert!(ack.header("via").unwrap().starts_with("SIP/2.0/UDP "));
    assert_eq!(gw.stats().active_calls, 1);

    let bye = in_dialog(
        "BYE",
        "sips:sbc@127.0.0.1",
        "z9hG4bKu3",
        "\"Alice\" <sips:alice@platform.example>;tag=atag",
        &to,
        "u-1@platform",
        2,
    );
    caller.send(&bye).await;
    let (out_bye, from) = uas.recv_where(is_method(Method::Bye)).await;
    assert_eq!(tag(out_bye.header("to").unwrap()), Some("btag"));
    uas.send_to(from, &answer(&out_bye, 200, "btag")).await;
    let done = caller.recv_where(is_status(200)).await;
    assert_eq!(done.cseq().unwrap().1, Method::Bye);
    assert_eq!(gw.stats().active_calls, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn udp_caller_retransmission_is_one_call_and_486_is_resent_until_ack() {
    let world = World::new("udp-caller");
    let callee = Callee::new(&world.callee_leaf).await;
    let text = format!(
        "{}\n{}\n{}",
        world.listener(""),
        world.plain_listener("inside", "udp"),
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr)
    );
    let gw = start_gateway(world.config(&text)).await;
    let gw_udp = gw.sip_addrs[1];
    let pbx = UdpPeer::new().await;

    let inv = invite("+15551234", "r-1@pbx", "z9hG4bKr1", "atag");
    pbx.send_to(gw_udp, &inv).await;
    pbx.send_to(gw_udp, &inv).await;
    let (trying, from) = pbx.recv().await;
    assert_eq!((trying.status(), from), (Some(100), gw_udp));
    // The copy is absorbed by the server transaction: answered with 100 again.
    let (trying2, _) = pbx.recv().await;
    assert_eq!(trying2.status(), Some(100));

    let mut c = callee.accept().await;
    let out_inv = c.recv_where(is_method(Method::Invite)).await;
    assert!(
        c.recv_within(Duration::from_millis(700)).await.is_none(),
        "one INVITE downstream for two copies upstream"
    );
    assert_eq!(gw.stats().active_calls, 1);

    c.send(&answer(&out_inv, 486, "btag")).await;
    let (busy, _) = pbx.recv_where(is_status(486)).await;
    // Timer G: without the ACK the 486 comes again (T1 = 500 ms).
    let (busy2, _) = pbx
        .recv_within(Duration::from_millis(1500))
        .await
        .expect("486 retransmitted by timer G");
    assert_eq!(busy2.status(), Some(486));
    assert_eq!(busy2.header("to"), busy.header("to"));
    let mut ack = ack_for("r-1@pbx", busy.header("to").unwrap(), "z9hG4bKr1");
    ack.set_request_uri("sips:+15551234@sbc.example.net");
    pbx.send_to(gw_udp, &ack).await;
    let after = pbx.recv_within(Duration::from_millis(2500)).await;
    assert!(after.is_none(), "the ACK stops timer G: {after:?}");
    gw.shutdown().await;
}

/// An INVITE whose SDP makes it well over 1300 bytes.
fn large_invite(call_id: &str) -> SipMessage {
    let mut m = invite("+15551234", call_id, "z9hG4bKl1", "atag");
    let mut body = SDP.replace('\n', "\r\n");
    for i in 0..40 {
        body.push_str(&format!(
            "a=x-padding-{i}:0123456789abcdef0123456789abcdef\r\n"
        ));
    }
    m.set_body(body.into_bytes());
    assert!(m.to_bytes().len() > 2000);
    m
}

#[tokio::test]
async fn request_over_1300_bytes_for_a_udp_target_goes_over_tcp() {
    let world = World::new("udp-size");
    // The target listens on the same port over TCP and UDP, as SIP servers do.
    let tcp = Callee::plain("127.0.0.1:0".parse().unwrap()).await;
    let udp = UdpPeer::bind(tcp.addr).await;
    let text = format!(
        "{}\n{}\n{}",
        world.listener(""),
        world.plain_listener("inside", "udp"),
        tenant_to(&format!("sip:{};transport=udp", tcp.addr))
    );
    let gw = start_gateway(world.config(&text)).await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;

    caller.send(&large_invite("l-1@platform")).await;
    let mut c = tcp.accept().await;
    let inv = c.recv_where(is_method(Method::Invite)).await;
    assert!(inv.to_bytes().len() > 1300);
    let via = inv.header("via").unwrap();
    assert!(via.starts_with("SIP/2.0/TCP "), "the Via says TCP: {via}");
    assert!(
        udp.recv_within(Duration::from_millis(700)).await.is_none(),
        "nothing over UDP (and no timer A over TCP)"
    );
    c.send(&answer(&inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    assert_eq!(ok.cseq().unwrap().1, Method::Invite);
    gw.shutdown().await;
}

#[tokio::test]
async fn call_through_a_plain_tcp_listener() {
    let world = World::new("tcp-listener");
    let callee = Callee::new(&world.callee_leaf).await;
    let text = format!(
        "{}\n{}\n{}",
        world.listener(""),
        world.plain_listener("inside", "tcp"),
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr)
    );
    let gw = start_gateway(world.config(&text)).await;
    let gw_tcp = gw.sip_addrs[1];
    let mut caller = Peer::plain(gw_tcp).await;
    caller
        .send(&invite("+15551234", "t-1@pbx", "z9hG4bKt1", "atag"))
        .await;
    assert_eq!(caller.recv().await.status(), Some(100));
    let mut c = callee.accept().await;
    let out_inv = c.recv_where(is_method(Method::Invite)).await;
    assert!(out_inv.header("via").unwrap().starts_with("SIP/2.0/TLS "));
    c.send(&answer(&out_inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    assert_eq!(
        ok.header("contact"),
        Some(format!("<sip:sbc@{gw_tcp};transport=tcp>").as_str())
    );
    let to = ok.header("to").unwrap().to_string();
    caller.send(&ack_for("t-1@pbx", &to, "z9hG4bKt2")).await;
    c.recv_where(is_method(Method::Ack)).await;
    assert_eq!(gw.stats().active_calls, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn call_to_a_plain_tcp_target_through_the_pool() {
    let world = World::new("tcp-target");
    let target = Callee::plain("127.0.0.1:0".parse().unwrap()).await;
    let text = format!(
        "{}\n{}\n{}",
        world.listener(""),
        world.plain_listener("inside", "tcp"),
        tenant_to(&format!("sip:{};transport=tcp", target.addr))
    );
    let gw = start_gateway(world.config(&text)).await;
    let gw_tcp = gw.sip_addrs[1];
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let mut c = None;
    for (n, call_id) in ["p-1@platform", "p-2@platform"].iter().enumerate() {
        caller
            .send(&invite(
                "+15551234",
                call_id,
                &format!("z9hG4bKp{n}"),
                "atag",
            ))
            .await;
        if c.is_none() {
            c = Some(target.accept().await);
        }
        let conn = c.as_mut().unwrap();
        let inv = conn.recv_where(is_method(Method::Invite)).await;
        let via = inv.header("via").unwrap();
        assert!(via.starts_with(&format!("SIP/2.0/TCP {gw_tcp};")), "{via}");
        assert_eq!(
            inv.header("contact"),
            Some(format!("<sip:sbc@{gw_tcp};transport=tcp>").as_str())
        );
        assert!(inv.request_uri().unwrap().ends_with(";transport=tcp"));
        conn.send(&answer(&inv, 486, "btag")).await;
        caller.recv_where(is_status(486)).await;
        conn.recv_where(is_method(Method::Ack)).await;
    }
    assert!(
        target
            .no_connection_within(Duration::from_millis(300))
            .await,
        "the second call reused the pooled TCP connection"
    );
    gw.shutdown().await;
}
