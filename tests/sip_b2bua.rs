//! End-to-end SIP-over-TLS tests: a Rust caller and callee (tokio-rustls) place calls
//! through the gateway on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sbc_sip::message::{tag, Method, SipMessage};
use sbc_testkit::*;

const CALLER_INSIDE: &[&str] = &["10.88.0.", "call-a-1@platform", "z9hG4bKinsideproxy"];
const CALLEE_INSIDE: &[&str] = &["10.99.0."];

struct Setup {
    world: World,
    gw: sbc_sip::server::ServerHandle,
    callee: Callee,
}

async fn setup(tag: &str, sip_extra: &str) -> Setup {
    let world = World::new(tag);
    let callee = Callee::new(&world.callee_leaf).await;
    let text = format!(
        "{sip_extra}\n{}\n{}",
        world.listener(""),
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr)
    );
    let gw = start_gateway(world.config(&text)).await;
    Setup { world, gw, callee }
}

impl Setup {
    async fn caller(&self) -> Peer {
        Peer::connect(self.gw.sip_addrs[0], &self.world.gw_ca.pem, None).await
    }
}

fn is_status(code: u16) -> impl Fn(&SipMessage) -> bool {
    move |m| m.status() == Some(code)
}

fn is_method(method: Method) -> impl Fn(&SipMessage) -> bool {
    move |m| m.method() == Some(&method)
}

/// Places a call up to 200/ACK; returns (caller, callee, caller's view of To, callee's INVITE).
async fn establish(s: &Setup, call_id: &str) -> (Peer, Peer, SipMessage, SipMessage) {
    let mut caller = s.caller().await;
    let inv = invite("+15551234", call_id, "z9hG4bKa1", "atag");
    caller.send(&inv).await;
    let trying = caller.recv().await;
    assert_eq!(trying.status(), Some(100));
    let mut callee = s.callee.accept().await;
    let out_inv = callee.recv_where(is_method(Method::Invite)).await;
    callee.send(&answer(&out_inv, 180, "btag")).await;
    let ringing = caller.recv_where(is_status(180)).await;
    assert_no_leak(&ringing, CALLEE_INSIDE);
    callee.send(&answer(&out_inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    assert_no_leak(&ok, CALLEE_INSIDE);
    let to = ok.header("to").unwrap().to_string();
    let ack = in_dialog(
        "ACK",
        "sips:sbc@127.0.0.1",
        "z9hG4bKa2",
        "\"Alice\" <sips:alice@platform.example>;tag=atag",
        &to,
        call_id,
        1,
    );
    caller.send(&ack).await;
    let out_ack = callee.recv_where(is_method(Method::Ack)).await;
    assert_no_leak(&out_ack, CALLER_INSIDE);
    assert_eq!(out_ack.cseq().unwrap().0, out_inv.cseq().unwrap().0);
    (caller, callee, ok, out_inv)
}

#[tokio::test]
async fn basic_call_invite_ringing_answer_ack_bye_with_topology_hiding() {
    let s = setup("basic", "").await;
    let mut caller = s.caller().await;
    let inv = invite("+15551234", "call-a-1@platform", "z9hG4bKa1", "atag");
    caller.send(&inv).await;
    assert_eq!(caller.recv().await.status(), Some(100));

    let mut callee = s.callee.accept().await;
    let out_inv = callee.recv_where(is_method(Method::Invite)).await;
    // Topology hiding towards the callee.
    assert_no_leak(&out_inv, CALLER_INSIDE);
    assert_ne!(out_inv.call_id(), Some("call-a-1@platform"));
    assert_eq!(out_inv.header_values("via").count(), 1, "only our own Via");
    assert!(out_inv.header("record-route").is_none());
    assert!(out_inv.header("route").is_none());
    let from_tag = tag(out_inv.header("from").unwrap()).unwrap();
    assert_ne!(from_tag, "atag", "new From tag on the outbound leg");
    assert!(out_inv
        .header("from")
        .unwrap()
        .contains("sips:alice@platform.example"));
    assert!(tag(out_inv.header("to").unwrap()).is_none());
    assert_eq!(out_inv.max_forwards(), Some(68), "Max-Forwards decremented");
    assert!(out_inv
        .request_uri()
        .unwrap()
        .starts_with("sips:+15551234@127.0.0.1:"));
    let contact = out_inv.header("contact").unwrap();
    assert!(contact.contains("127.0.0.1"), "our own Contact: {contact}");
    assert_eq!(
        out_inv.header_values("supported").collect::<Vec<_>>(),
        ["timer", "100rel"],
        "end-to-end headers cross, 100rel too (relayed per leg)"
    );
    assert_eq!(
        out_inv.header("user-agent"),
        None,
        "User-Agent does not cross (header policy default)"
    );
    assert_eq!(
        out_inv.body(),
        inv.body(),
        "SDP passes (media anchoring is separate)"
    );

    callee.send(&answer(&out_inv, 180, "btag")).await;
    let ringing = caller.recv().await;
    assert_eq!(ringing.status(), Some(180));
    assert_no_leak(&ringing, CALLEE_INSIDE);
    assert_eq!(ringing.call_id(), Some("call-a-1@platform"));
    let a_tag = tag(ringing.header("to").unwrap()).unwrap().to_string();
    assert_ne!(a_tag, "btag", "callee's tag must not reach the caller");
    assert_eq!(
        ringing.header_values("via").count(),
        2,
        "caller's own Vias come back"
    );

    let mut ok200 = answer(&out_inv, 200, "btag");
    ok200.set_body(SDP.replace('\n', "\r\n").into_bytes());
    ok200.push_header("Content-Type", "application/sdp");
    callee.send(&ok200).await;
    let ok = caller.recv().await;
    assert_eq!(ok.status(), Some(200));
    assert_no_leak(&ok, CALLEE_INSIDE);
    assert_eq!(tag(ok.header("to").unwrap()), Some(a_tag.as_str()));
    assert!(ok.header("record-route").is_none());
    assert_eq!(ok.cseq().unwrap(), (1, Method::Invite));
    assert!(!ok.body().is_empty());

    let to = ok.header("to").unwrap().to_string();
    let from = "\"Alice\" <sips:alice@platform.example>;tag=atag";
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@127.0.0.1",
            "z9hG4bKa2",
            from,
            &to,
            "call-a-1@platform",
            1,
        ))
        .await;
    let out_ack = callee.recv().await;
    assert_eq!(out_ack.method(), Some(&Method::Ack));
    assert_eq!(out_ack.call_id(), out_inv.call_id());
    assert_eq!(
        out_ack.request_uri(),
        Some("sips:bob@10.99.0.7:5062"),
        "ACK goes to the callee's Contact"
    );
    assert_eq!(
        out_ack.header("route"),
        Some("<sips:10.99.0.2:5061;lr>"),
        "callee's route set"
    );
    assert_no_leak(&out_ack, CALLER_INSIDE);
    assert_eq!(s.gw.stats().active_calls, 1);

    // BYE from the caller, CSeq 2 on leg A maps to the next CSeq on leg B.
    caller
        .send(&in_dialog(
            "BYE",
            "sips:sbc@127.0.0.1",
            "z9hG4bKa3",
            from,
            &to,
            "call-a-1@platform",
            2,
        ))
        .await;
    let out_bye = callee.recv().await;
    assert_eq!(out_bye.method(), Some(&Method::Bye));
    assert_eq!(out_bye.cseq().unwrap().0, 2);
    assert_eq!(out_bye.call_id(), out_inv.call_id());
    assert_eq!(tag(out_bye.header("to").unwrap()), Some("btag"));
    assert_no_leak(&out_bye, CALLER_INSIDE);
    callee.send(&answer(&out_bye, 200, "btag")).await;
    let bye_ok = caller.recv().await;
    assert_eq!(bye_ok.status(), Some(200));
    assert_eq!(bye_ok.cseq().unwrap(), (2, Method::Bye));
    assert_no_leak(&bye_ok, CALLEE_INSIDE);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.gw.stats().active_calls, 0, "call released after BYE");
}

#[tokio::test]
async fn bye_from_callee_and_in_dialog_requests_both_ways() {
    let s = setup("bye-b", "").await;
    let (mut caller, mut callee, ok, out_inv) = establish(&s, "call-a-2@platform").await;
    let to = ok.header("to").unwrap().to_string();
    let from = "\"Alice\" <sips:alice@platform.example>;tag=atag";

    // re-INVITE from the caller (hold).
    let mut reinv = in_dialog(
        "INVITE",
        "sips:sbc@127.0.0.1",
        "z9hG4bKr1",
        from,
        &to,
        "call-a-2@platform",
        2,
    );
    reinv.set_body(
        SDP.replace("a=crypto", "a=sendonly\r\na=crypto")
            .replace('\n', "\r\n")
            .into_bytes(),
    );
    reinv.push_header("Content-Type", "application/sdp");
    caller.send(&reinv).await;
    let out_reinv = callee.recv_where(is_method(Method::Invite)).await;
    assert_eq!(out_reinv.call_id(), out_inv.call_id());
    assert_eq!(out_reinv.cseq().unwrap(), (2, Method::Invite));
    assert!(String::from_utf8_lossy(out_reinv.body()).contains("a=sendonly"));
    assert_no_leak(&out_reinv, CALLER_INSIDE);
    callee.send(&answer(&out_reinv, 200, "btag")).await;
    let reok = caller.recv_where(is_status(200)).await;
    assert_eq!(reok.cseq().unwrap(), (2, Method::Invite));
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@127.0.0.1",
            "z9hG4bKr2",
            from,
            &to,
            "call-a-2@platform",
            2,
        ))
        .await;
    let reack = callee.recv_where(is_method(Method::Ack)).await;
    assert_eq!(reack.cseq().unwrap(), (2, Method::Ack));

    // UPDATE from the caller.
    caller
        .send(&in_dialog(
            "UPDATE",
            "sips:sbc@127.0.0.1",
            "z9hG4bKu1",
            from,
            &to,
            "call-a-2@platform",
            3,
        ))
        .await;
    let up = callee.recv_where(is_method(Method::Update)).await;
    assert_eq!(up.cseq().unwrap(), (3, Method::Update));
    callee.send(&answer(&up, 200, "btag")).await;
    assert_eq!(
        caller.recv_where(is_status(200)).await.cseq().unwrap(),
        (3, Method::Update)
    );

    // INFO and NOTIFY from the callee, towards the caller: leg A CSeq starts fresh.
    let b_from = out_inv.header("to").unwrap();
    let b_from = sbc_sip::message::with_tag(b_from, "btag");
    let b_to = out_inv.header("from").unwrap().to_string();
    let b_call = out_inv.call_id().unwrap().to_string();
    for (i, method) in ["INFO", "NOTIFY"].iter().enumerate() {
        let mut req = in_dialog(
            method,
            "sips:sbc@127.0.0.1",
            &format!("z9hG4bKb{i}"),
            &b_from,
            &b_to,
            &b_call,
            10 + i as u32,
        );
        req.remove_header("via");
        req.insert_header_first(
            "Via",
            format!("SIP/2.0/TLS 10.99.0.7:5062;branch=z9hG4bKbx{i}"),
        );
        req.set_header("Contact", "<sips:bob@10.99.0.7:5062>");
        req.push_header("Event", "dialog");
        callee.send(&req).await;
        let got = caller.recv_where(|m| m.is_request()).await;
        assert_eq!(got.method().unwrap().as_str(), *method);
        assert_eq!(got.call_id(), Some("call-a-2@platform"));
        assert_eq!(
            got.request_uri(),
            Some("sips:alice@10.88.0.5:5061"),
            "to the caller's Contact"
        );
        assert_eq!(tag(got.header("to").unwrap()), Some("atag"));
        assert_eq!(
            got.header("route"),
            Some("<sips:10.88.0.1:5061;lr>"),
            "caller's route set"
        );
        assert_no_leak(&got, CALLEE_INSIDE);
        caller.send(&answer(&got, 200, "atag")).await;
        let resp = callee.recv_where(|m| m.status().is_some()).await;
        assert_eq!(resp.status(), Some(200));
        assert_eq!(
            resp.cseq().unwrap().0,
            10 + i as u32,
            "CSeq mapped back per leg"
        );
        assert_no_leak(&resp, CALLER_INSIDE);
    }

    // BYE from the callee.
    let mut bye = in_dialog(
        "BYE",
        "sips:sbc@127.0.0.1",
        "z9hG4bKbye",
        &b_from,
        &b_to,
        &b_call,
        20,
    );
    bye.remove_header("via");
    bye.insert_header_first("Via", "SIP/2.0/TLS 10.99.0.7:5062;branch=z9hG4bKbyeb");
    callee.send(&bye).await;
    let got = caller.recv_where(is_method(Method::Bye)).await;
    assert_eq!(got.call_id(), Some("call-a-2@platform"));
    caller.send(&answer(&got, 200, "atag")).await;
    let resp = callee.recv_where(|m| m.status().is_some()).await;
    assert_eq!(resp.status(), Some(200));
    assert_eq!(resp.cseq().unwrap(), (20, Method::Bye));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.gw.stats().active_calls, 0);
}

#[tokio::test]
async fn cancel_during_ringing_reaches_callee_and_caller_gets_487() {
    let s = setup("cancel", "").await;
    let mut caller = s.caller().await;
    let inv = invite("+15551234", "call-a-3@platform", "z9hG4bKc1", "atag");
    caller.send(&inv).await;
    let mut callee = s.callee.accept().await;
    let out_inv = callee.recv_where(is_method(Method::Invite)).await;
    callee.send(&answer(&out_inv, 180, "btag")).await;
    caller.recv_where(is_status(180)).await;

    let cancel = sip("CANCEL sips:+15551234@sbc.example.net SIP/2.0
Via: SIP/2.0/TLS 10.88.0.5:5061;branch=z9hG4bKc1
Max-Forwards: 70
From: \"Alice\" <sips:alice@platform.example>;tag=atag
To: <sips:+15551234@sbc.example.net>
Call-ID: call-a-3@platform
CSeq: 1 CANCEL
");
    caller.send(&cancel).await;
    let r1 = caller.recv().await;
    let r2 = caller.recv().await;
    let mut got: Vec<(u16, Method)> = [&r1, &r2]
        .iter()
        .map(|m| (m.status().unwrap(), m.cseq().unwrap().1))
        .collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(got, vec![(200, Method::Cancel), (487, Method::Invite)]);

    let out_cancel = callee.recv().await;
    assert_eq!(out_cancel.method(), Some(&Method::Cancel));
    assert_eq!(out_cancel.call_id(), out_inv.call_id());
    assert_eq!(
        out_cancel.header("via"),
        out_inv.header("via"),
        "CANCEL uses the INVITE's branch"
    );
    assert_no_leak(&out_cancel, CALLER_INSIDE);
    callee.send(&answer(&out_cancel, 200, "btag")).await;
    callee.send(&answer(&out_inv, 487, "btag")).await;
    let ack = callee.recv().await;
    assert_eq!(
        ack.method(),
        Some(&Method::Ack),
        "gateway ACKs the 487 hop by hop"
    );
    assert_eq!(ack.header("via"), out_inv.header("via"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.gw.stats().active_calls, 0, "no call left after CANCEL");
}

#[tokio::test]
async fn busy_486_is_relayed_and_acked_on_both_legs() {
    let s = setup("busy", "").await;
    let mut caller = s.caller().await;
    caller
        .send(&invite(
            "+15551234",
            "call-a-4@platform",
            "z9hG4bKd1",
            "atag",
        ))
        .await;
    let mut callee = s.callee.accept().await;
    let out_inv = callee.recv_where(is_method(Method::Invite)).await;
    callee.send(&answer(&out_inv, 486, "btag")).await;
    let busy = caller.recv_where(is_status(486)).await;
    assert_eq!(busy.cseq().unwrap(), (1, Method::Invite));
    assert_no_leak(&busy, CALLEE_INSIDE);
    let ack = callee.recv().await;
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(tag(ack.header("to").unwrap()), Some("btag"));
    // The caller's ACK for the 486 is absorbed by the gateway, not forwarded.
    let to = busy.header("to").unwrap().to_string();
    let mut a_ack = in_dialog(
        "ACK",
        "sips:+15551234@sbc.example.net",
        "z9hG4bKd1",
        "\"Alice\" <sips:alice@platform.example>;tag=atag",
        &to,
        "call-a-4@platform",
        1,
    );
    a_ack.remove_header("contact");
    caller.send(&a_ack).await;
    assert!(callee
        .recv_within(Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(s.gw.stats().active_calls, 0);
}

#[tokio::test]
async fn options_ping_is_answered_locally_and_keepalive_gets_pong() {
    let s = setup("options", "").await;
    let mut caller = s.caller().await;
    caller
        .send_text(
            "OPTIONS sips:sbc.example.net SIP/2.0
Via: SIP/2.0/TLS 10.88.0.5:5061;branch=z9hG4bKo1
Max-Forwards: 70
From: <sips:ping@platform.example>;tag=p1
To: <sips:sbc.example.net>
Call-ID: ping-1@platform
CSeq: 1 OPTIONS
",
        )
        .await;
    let ok = caller.recv().await;
    assert_eq!(ok.status(), Some(200));
    assert!(ok.header("allow").unwrap().contains("INVITE"));
    assert!(
        s.callee
            .no_connection_within(Duration::from_millis(200))
            .await,
        "OPTIONS not forwarded"
    );
    caller.send_raw(b"\r\n\r\n").await;
    assert!(caller
        .recv_within(Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(
        caller.pongs, 1,
        "double-CRLF ping answered with a CRLF pong"
    );
}

#[tokio::test]
async fn callee_that_never_answers_gives_408() {
    // T1 = 10 ms: timer B fires after 640 ms.
    let s = setup("timeout", "[sip]\nt1_ms = 10").await;
    let mut caller = s.caller().await;
    caller
        .send(&invite(
            "+15551234",
            "call-a-5@platform",
            "z9hG4bKe1",
            "atag",
        ))
        .await;
    let _callee = s.callee.accept().await;
    let r = caller.recv_where(|m| m.status() != Some(100)).await;
    assert_eq!(r.status(), Some(408));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.gw.stats().active_calls, 0);
}

#[tokio::test]
async fn ringing_longer_than_the_limit_gives_408_and_cancel() {
    let s = setup("ringing", "[sip]\nmax_ringing_secs = 1").await;
    let mut caller = s.caller().await;
    caller
        .send(&invite(
            "+15551234",
            "call-a-6@platform",
            "z9hG4bKf1",
            "atag",
        ))
        .await;
    let mut callee = s.callee.accept().await;
    let out_inv = callee.recv_where(is_method(Method::Invite)).await;
    callee.send(&answer(&out_inv, 180, "btag")).await;
    caller.recv_where(is_status(180)).await;
    let r = caller
        .recv_within(Duration::from_secs(3))
        .await
        .expect("408 after the ringing limit");
    assert_eq!(r.status(), Some(408));
    let cancel = callee.recv().await;
    assert_eq!(cancel.method(), Some(&Method::Cancel));
}

#[tokio::test]
async fn unreachable_target_gives_503() {
    let world = World::new("unreach");
    // A port that was bound and released: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let text = format!(
        "{}\n{}",
        world.listener(""),
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", dead)
    );
    let gw = start_gateway(world.config(&text)).await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&invite("+1555", "call-a-7@platform", "z9hG4bKg1", "atag"))
        .await;
    let r = caller.recv_where(|m| m.status() != Some(100)).await;
    assert_eq!(r.status(), Some(503));
    assert!(r.reason().unwrap().contains("Unreachable"));
    assert_eq!(gw.stats().active_calls, 0);
}

/// RFC 3262 over real TLS: the callee's reliable 183 reaches the caller with the caller
/// leg's own RSeq; the caller's PRACK reaches the callee with an RAck that matches the
/// callee's own RSeq and INVITE CSeq; the PRACK's 200 comes back; then 200, ACK, BYE.
#[tokio::test]
async fn prack_is_relayed_with_rseq_and_rack_mapped_per_leg() {
    let s = setup("prack", "").await;
    let mut caller = s.caller().await;
    let call_id = "call-prack@platform";
    let from = "\"Alice\" <sips:alice@platform.example>;tag=atag";
    // The platform's INVITE offers 100rel (Supported: timer, 100rel).
    caller
        .send(&invite("+15551234", call_id, "z9hG4bKp1", "atag"))
        .await;
    assert_eq!(caller.recv().await.status(), Some(100));
    let mut callee = s.callee.accept().await;
    let out_inv = callee.recv_where(is_method(Method::Invite)).await;
    assert!(out_inv.header_values("supported").any(|t| t == "100rel"));
    let callee_rseq = 4711u32;
    let mut p183 = answer(&out_inv, 183, "btag");
    p183.push_header("Require", "100rel");
    p183.push_header("RSeq", callee_rseq.to_string());
    callee.send(&p183).await;
    let got183 = caller.recv_where(is_status(183)).await;
    assert_no_leak(&got183, CALLEE_INSIDE);
    assert!(got183.header_values("require").any(|t| t == "100rel"));
    let caller_rseq: u32 = got183.header("rseq").unwrap().parse().unwrap();
    assert!((1..1u32 << 31).contains(&caller_rseq));
    let to = got183.header("to").unwrap().to_string();
    let mut prack = in_dialog(
        "PRACK",
        "sips:sbc@127.0.0.1",
        "z9hG4bKp2",
        from,
        &to,
        call_id,
        2,
    );
    prack.push_header("RAck", format!("{caller_rseq} 1 INVITE"));
    caller.send(&prack).await;
    // "PRACK relayed": the UAS gets a PRACK whose RAck matches its own RSeq.
    let out_prack = callee.recv_where(is_method(Method::Prack)).await;
    assert_no_leak(&out_prack, CALLER_INSIDE);
    let invite_cseq = out_inv.cseq().unwrap().0;
    assert_eq!(
        out_prack.header("rack"),
        Some(format!("{callee_rseq} {invite_cseq} INVITE").as_str())
    );
    assert_eq!(out_prack.call_id(), out_inv.call_id());
    assert_eq!(tag(out_prack.header("to").unwrap()), Some("btag"));
    callee.send(&answer(&out_prack, 200, "btag")).await;
    let prack_ok = caller.recv_where(is_status(200)).await;
    assert_eq!(prack_ok.cseq(), Some((2, Method::Prack)));
    // The call is answered and acknowledged as usual.
    callee.send(&answer(&out_inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    assert_eq!(ok.cseq(), Some((1, Method::Invite)));
    let ack = in_dialog(
        "ACK",
        "sips:sbc@127.0.0.1",
        "z9hG4bKp3",
        from,
        &to,
        call_id,
        1,
    );
    caller.send(&ack).await;
    callee.recv_where(is_method(Method::Ack)).await;
    let bye = in_dialog(
        "BYE",
        "sips:sbc@127.0.0.1",
        "z9hG4bKp4",
        from,
        &to,
        call_id,
        3,
    );
    caller.send(&bye).await;
    let out_bye = callee.recv_where(is_method(Method::Bye)).await;
    callee.send(&answer(&out_bye, 200, "btag")).await;
    assert_eq!(
        caller.recv_where(is_status(200)).await.cseq(),
        Some((3, Method::Bye))
    );
}
