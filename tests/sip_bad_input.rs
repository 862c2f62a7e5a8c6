//! Bad input over real TLS: each case gets the right SIP answer (or a closed connection),
//! and never disturbs other connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sbc_sip::message::Method;
use sbc_testkit::*;

#[tokio::test]
async fn unrecognised_peer_gets_403_nothing_is_forwarded_and_repeat_offenders_are_cut() {
    let world = World::new("unrecognised");
    let callee = Callee::new(&world.callee_leaf).await;
    // The only tenant is recognised by SNI; our peer connects with another name.
    let text = format!(
        "{}\n{}",
        world.listener(""),
        world.tenant("acme", "sni = [\"acme.sbc.test\"]", "", callee.addr)
    );
    let gw = start_gateway(world.config(&text)).await;
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    peer.send(&invite("+1555", "x1@platform", "z9hG4bKx1", "atag"))
        .await;
    let r = peer.recv().await;
    assert_eq!(r.status(), Some(403));
    assert!(
        callee
            .no_connection_within(Duration::from_millis(300))
            .await,
        "nothing forwarded"
    );
    for i in 0..10 {
        peer.send_text(&options_text(&format!("z9hG4bKo{i}"))).await;
    }
    assert!(
        peer.closed_within(Duration::from_secs(3)).await,
        "closed after repeated refusals"
    );
    assert_eq!(gw.stats().active_calls, 0);
}

#[tokio::test]
async fn tenant_recognised_by_sni_is_routed() {
    let world = World::new("sni");
    let callee = Callee::new(&world.callee_leaf).await;
    let gw_leaf = world.gw_ca.issue(&["acme.sbc.test", "localhost"]);
    let cert = write(&world.dir, "gw-sni.pem", &gw_leaf.cert_pem);
    let key = write(&world.dir, "gw-sni.key", &gw_leaf.key_pem);
    let text = format!(
        "[[listeners]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\ncertificate = {cert:?}\nprivate_key = {key:?}\n{}",
        world.tenant("acme", "sni = [\"acme.sbc.test\"]", "", callee.addr)
    );
    let gw = start_gateway(world.config(&text)).await;
    let mut peer = Peer::try_connect(gw.sip_addrs[0], &world.gw_ca.pem, None, "acme.sbc.test")
        .await
        .unwrap();
    peer.send(&invite("+1555", "sni1@platform", "z9hG4bKs1", "atag"))
        .await;
    assert_eq!(peer.recv().await.status(), Some(100));
    let mut c = callee.accept().await;
    assert_eq!(c.recv().await.method(), Some(&Method::Invite));
}

#[tokio::test]
async fn mtls_client_certificate_recognises_the_tenant() {
    let world = World::new("mtls");
    let callee_a = Callee::new(&world.callee_leaf).await;
    let callee_b = Callee::new(&world.callee_leaf).await;
    let listener = world.listener(&format!("client_ca = {:?}", world.client_ca_file));
    // Two tenants: one by client-cert SAN, the other by source address. The certificate
    // comes first in recognition order, so the cert holder is "acme" even from loopback.
    let text = format!(
        "{listener}\n{}\n{}",
        world.tenant(
            "acme",
            "client_cert_san = [\"pbx.acme.test\"]",
            "",
            callee_a.addr
        ),
        world.tenant(
            "local",
            "source_cidrs = [\"127.0.0.0/8\"]",
            "",
            callee_b.addr
        )
    );
    let gw = start_gateway(world.config(&text)).await;
    let client = world.client_ca.issue(&["pbx.acme.test"]);
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, Some(&client)).await;
    peer.send(&invite("+1555", "m1@platform", "z9hG4bKm1", "atag"))
        .await;
    assert_eq!(peer.recv().await.status(), Some(100));
    let mut a = callee_a.accept().await;
    assert_eq!(a.recv().await.method(), Some(&Method::Invite));
    assert!(
        callee_b
            .no_connection_within(Duration::from_millis(200))
            .await
    );

    // Without a certificate the same source is tenant "local".
    let mut anon = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    anon.send(&invite("+1555", "m2@platform", "z9hG4bKm2", "atag"))
        .await;
    assert_eq!(anon.recv().await.status(), Some(100));
    let mut b = callee_b.accept().await;
    assert_eq!(b.recv().await.method(), Some(&Method::Invite));
}

#[tokio::test]
async fn mtls_required_refuses_a_client_without_certificate() {
    let world = World::new("mtls-req");
    let listener = world.listener(&format!(
        "client_ca = {:?}\nrequire_client_cert = true",
        world.client_ca_file
    ));
    let text = format!(
        "{listener}\n{}",
        world.tenant(
            "acme",
            "client_cert_san = [\"pbx.acme.test\"]",
            "",
            "127.0.0.1:9".parse().unwrap()
        )
    );
    let gw = start_gateway(world.config(&text)).await;
    // TLS 1.3 reports the missing certificate after the handshake: the first read fails.
    match Peer::try_connect(gw.sip_addrs[0], &world.gw_ca.pem, None, "localhost").await {
        Err(_) => {}
        Ok(mut p) => {
            p.send_text(&options_text("z9hG4bKq1")).await;
            assert!(
                p.closed_within(Duration::from_secs(2)).await,
                "no service without a client certificate"
            );
        }
    }
}

async fn demo_gateway(tag: &str) -> (World, sbc_sip::server::ServerHandle, Callee) {
    loopback_gateway(tag, "demo", "+1", LOOPBACK_FLOOD_GUARD, "").await
}

#[tokio::test]
async fn no_route_gives_404() {
    let (world, gw, callee) = demo_gateway("noroute").await;
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    peer.send(&invite("+4420", "nr@platform", "z9hG4bKn1", "atag"))
        .await;
    let r = peer.recv().await;
    assert_eq!(r.status(), Some(404));
    assert!(
        callee
            .no_connection_within(Duration::from_millis(200))
            .await
    );
}

#[tokio::test]
async fn max_forwards_zero_gives_483() {
    let (world, gw, callee) = demo_gateway("mf0").await;
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let mut inv = invite("+1555", "mf@platform", "z9hG4bKmf", "atag");
    inv.set_header("Max-Forwards", "0");
    peer.send(&inv).await;
    assert_eq!(peer.recv().await.status(), Some(483));
    assert!(
        callee
            .no_connection_within(Duration::from_millis(200))
            .await
    );
}

#[tokio::test]
async fn method_not_allowed_outside_a_dialog_gives_405_with_allow_and_stray_bye_481() {
    let (world, gw, _callee) = demo_gateway("405").await;
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    peer.send_text(&options_text("z9hG4bKr1").replace("OPTIONS", "REGISTER"))
        .await;
    let r = peer.recv().await;
    assert_eq!(r.status(), Some(405));
    assert!(r.header("allow").unwrap().contains("INVITE"));
    peer.send_text(&options_text("z9hG4bKr2").replace("OPTIONS", "BYE"))
        .await;
    assert_eq!(peer.recv().await.status(), Some(481));
}

#[tokio::test]
async fn malformed_request_gets_400_naming_the_fault_and_the_connection_stays() {
    let (world, gw, _callee) = demo_gateway("400").await;
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    // No Call-ID.
    let bad = options_text("z9hG4bKb1").replace("Call-ID: ping-z9hG4bKb1@platform\n", "");
    let bad = bad.replace('\n', "\r\n") + "Content-Length: 0\r\n\r\n";
    peer.send_raw(bad.as_bytes()).await;
    let r = peer.recv_raw().await;
    assert!(
        r.starts_with("SIP/2.0 400 Bad Request (Missing Call-ID)\r\n"),
        "reason names the fault: {r}"
    );
    assert!(
        r.contains("Via: SIP/2.0/TLS 10.88.0.5:5061;branch=z9hG4bKb1\r\n"),
        "addressed by the Via: {r}"
    );
    // Bad CSeq.
    let bad = options_text("z9hG4bKb2").replace("CSeq: 1 OPTIONS", "CSeq: x OPTIONS");
    let bad = bad.replace('\n', "\r\n") + "Content-Length: 0\r\n\r\n";
    peer.send_raw(bad.as_bytes()).await;
    let r = peer.recv_raw().await;
    assert!(
        r.starts_with("SIP/2.0 400 Bad Request (Malformed CSeq)\r\n"),
        "{r}"
    );
    // The connection still serves.
    peer.send_text(&options_text("z9hG4bKb3")).await;
    assert_eq!(peer.recv().await.status(), Some(200));
}

/// Issue 12 findings 5, 6, 7 over TLS: a request line with another SIP version gets 505,
/// a trailing space or a missing version a 400 naming the fault (they used to be dropped,
/// leaving the sender to its Timer B); a duplicated Call-ID a 400; SWS around `;` and `=`
/// in header parameters is valid and the request is served.
#[tokio::test]
async fn request_line_faults_and_duplicates_are_answered_and_lws_is_served() {
    let (world, gw, _callee) = demo_gateway("reqline").await;
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let line = "OPTIONS sips:sbc.example.net SIP/2.0\n";
    let cases = [
        (
            "OPTIONS sips:sbc.example.net SIP/3.0\n",
            "SIP/2.0 505 Version Not Supported\r\n",
        ),
        (
            "OPTIONS sips:sbc.example.net SIP/2.0 \n",
            "SIP/2.0 400 Bad Request (Trailing Whitespace In Request Line)\r\n",
        ),
        (
            "OPTIONS sips:sbc.example.net\n",
            "SIP/2.0 400 Bad Request (Missing SIP Version)\r\n",
        ),
    ];
    for (i, (bad_line, want)) in cases.into_iter().enumerate() {
        let branch = format!("z9hG4bKrl{i}");
        let bad = options_text(&branch).replace(line, bad_line);
        let bad = bad.replace('\n', "\r\n") + "Content-Length: 0\r\n\r\n";
        peer.send_raw(bad.as_bytes()).await;
        let r = peer.recv_raw().await;
        assert!(r.starts_with(want), "{bad_line:?} answered: {r}");
        assert!(
            r.contains(&format!(
                "Via: SIP/2.0/TLS 10.88.0.5:5061;branch={branch}\r\n"
            )),
            "addressed by the Via: {r}"
        );
    }
    let dup = options_text("z9hG4bKdup") + "i: other@platform\n";
    let dup = dup.replace('\n', "\r\n") + "Content-Length: 0\r\n\r\n";
    peer.send_raw(dup.as_bytes()).await;
    let r = peer.recv_raw().await;
    assert!(
        r.starts_with("SIP/2.0 400 Bad Request (Duplicate Call-ID)\r\n"),
        "{r}"
    );
    let lws = options_text("z9hG4bKlws")
        .replace(";branch=z9hG4bKlws", " ; branch = z9hG4bKlws")
        .replace(
            "<sips:ping@platform.example>;tag=p1",
            "sips:ping@platform.example ; tag = p1",
        );
    peer.send_text(&lws).await;
    let r = peer.recv().await;
    assert_eq!(r.status(), Some(200), "SWS around ; and = is valid");
    assert_eq!(r.header("from").and_then(sbc_sip::message::tag), Some("p1"));
}

#[tokio::test]
async fn oversized_message_closes_the_connection() {
    let world = World::new("big");
    let callee = Callee::new(&world.callee_leaf).await;
    let text = format!(
        "[sip]\nmax_message_bytes = 4096\n{}\n{}",
        world.listener(""),
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr)
    );
    let gw = start_gateway(world.config(&text)).await;
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let mut inv = invite("+1555", "big@platform", "z9hG4bKbig", "atag");
    inv.set_body(vec![b'a'; 8192]);
    peer.send(&inv).await;
    assert!(peer.closed_within(Duration::from_secs(3)).await);
    assert!(
        callee
            .no_connection_within(Duration::from_millis(100))
            .await
    );
    // Others are still served.
    let mut other = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    other.send_text(&options_text("z9hG4bKok")).await;
    assert_eq!(other.recv().await.status(), Some(200));
}

#[tokio::test]
async fn garbage_flood_on_one_connection_does_not_affect_calls_on_another() {
    let (world, gw, callee) = demo_gateway("flood").await;
    let addr = gw.sip_addrs[0];
    let ca = world.gw_ca.pem.clone();
    let flood = tokio::spawn(async move {
        let mut attacker = Peer::connect(addr, &ca, None).await;
        // Framed garbage (answered 400 or dropped) followed by unframed garbage.
        let junk = b"GARBAGE nonsense SIP/9.9\r\nNot a header\r\nContent-Length: 0\r\n\r\n";
        for _ in 0..2000 {
            if attacker.closed_within(Duration::from_millis(0)).await {
                return true;
            }
            let mut burst = Vec::new();
            for _ in 0..16 {
                burst.extend_from_slice(junk);
            }
            if tokio::time::timeout(Duration::from_millis(200), attacker.send_raw(&burst))
                .await
                .is_err()
            {
                break;
            }
        }
        attacker.closed_within(Duration::from_secs(2)).await
    });
    let mut ok_calls = 0;
    let mut callee_conn: Option<Peer> = None;
    for i in 0..20 {
        let mut caller = Peer::connect(addr, &world.gw_ca.pem, None).await;
        caller
            .send(&invite(
                "+1555",
                &format!("good{i}@platform"),
                &format!("z9hG4bKgood{i}"),
                "atag",
            ))
            .await;
        if callee_conn.is_none() {
            callee_conn = Some(callee.accept().await);
        }
        let c = callee_conn.as_mut().unwrap();
        let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
        c.send(&answer(&inv, 200, "btag")).await;
        let ok = caller.recv_where(|m| m.status() != Some(100)).await;
        if ok.status() == Some(200) {
            ok_calls += 1;
        }
    }
    assert_eq!(
        ok_calls, 20,
        "every call on a clean connection succeeds during the flood"
    );
    assert!(
        flood.await.unwrap(),
        "the flooding connection was closed by the gateway"
    );
}
