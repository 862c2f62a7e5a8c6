//! Route targets given by domain name, end to end: a call through the gateway to
//! `sips:trunk.test` (no port) resolved NAPTR → SRV → A against a DNS server on loopback
//! (`sip.dns_servers`), the first SRV candidate broken (accepts, then closes before the
//! TLS handshake) so the call lands on the second; a name whose DNS never answers giving
//! 503 within the deadline while a call to another target goes through; and, on a route
//! with a second target, that silence failing the call over to it within the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sbc_sip::message::Method;
use sbc_testkit::dns::{silent_server, DnsServer};
use sbc_testkit::*;

fn route(prefix: &str, target: &str, ca_file: &str) -> String {
    format!(
        "[[tenants.routes]]\nprefix = \"{prefix}\"\ntarget = \"{target}\"\nca_file = {ca_file:?}\n"
    )
}

fn tenant(routes: &str) -> String {
    format!("[[tenants]]\nid = \"demo\"\n[tenants.recognition]\nsource_cidrs = [\"127.0.0.0/8\"]\n{routes}")
}

fn dns_section(server: SocketAddr, timeout_ms: u64) -> String {
    format!("[sip]\ndns_servers = [\"{server}\"]\ndns_timeout_ms = {timeout_ms}\n")
}

#[tokio::test]
async fn call_to_a_target_given_by_name_follows_naptr_srv_a_and_skips_a_dead_candidate() {
    let world = World::new("dns-e2e");
    // The UAS's certificate names the configured host, not the SRV target (RFC 5922 §4).
    let leaf = world.callee_ca.issue(&["trunk.test"]);
    let uas = Callee::new(&leaf).await;
    let dns = DnsServer::start().await;
    dns.add_naptr(
        "trunk.test",
        10,
        10,
        "SIPS+D2T",
        "_sips._tcp.trunk.test",
        60,
    );
    // Priority 10: a host that accepts and hangs up; priority 20: the UAS.
    let broken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_port = broken.local_addr().unwrap().port();
    let tried_broken = tokio::spawn(async move {
        let (s, _) = broken.accept().await.unwrap();
        drop(s);
    });
    dns.add_srv(
        "_sips._tcp.trunk.test",
        10,
        1,
        broken_port,
        "dead.trunk.test",
        60,
    );
    dns.add_srv(
        "_sips._tcp.trunk.test",
        20,
        1,
        uas.addr.port(),
        "uas-1.trunk.test",
        60,
    );
    dns.add_a("dead.trunk.test", "127.0.0.1".parse().unwrap(), 60);
    dns.add_a("uas-1.trunk.test", "127.0.0.1".parse().unwrap(), 60);

    let text = format!(
        "{}\n{}\n{}",
        dns_section(dns.addr, 2000),
        world.listener(""),
        tenant(&route("", "sips:trunk.test", &world.callee_ca_file))
    );
    let gw = start_gateway(world.config(&text)).await;
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&invite(
            "+15551234",
            "call-dns-1@platform",
            "z9hG4bKd1",
            "atag",
        ))
        .await;
    assert_eq!(caller.recv().await.status(), Some(100));

    tokio::time::timeout(WAIT, tried_broken)
        .await
        .expect("the priority-10 candidate is tried first")
        .unwrap();
    let mut callee = uas.accept().await;
    let out_inv = callee
        .recv_where(|m| m.method() == Some(&Method::Invite))
        .await;
    assert_eq!(
        out_inv.request_uri(),
        Some("sips:+15551234@trunk.test"),
        "Request-URI keeps the configured domain, no port"
    );
    callee.send(&answer(&out_inv, 200, "btag")).await;
    let ok = caller
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(ok.status(), Some(200));
    assert!(
        dns.total_queries() >= 4,
        "NAPTR, SRV and A/AAAA asked: {}",
        dns.total_queries()
    );
}

#[tokio::test]
async fn silent_dns_fails_the_call_within_the_deadline_and_other_targets_still_work() {
    let world = World::new("dns-silent");
    let (silent, _keep) = silent_server().await;
    let callee = Callee::new(&world.callee_leaf).await;
    let routes = format!(
        "{}{}",
        route("+1", "sips:slow.test", &world.callee_ca_file),
        route(
            "+44",
            &format!("sips:{}", callee.addr),
            &world.callee_ca_file
        )
    );
    let text = format!(
        "{}\n{}\n{}",
        dns_section(silent, 500),
        world.listener(""),
        tenant(&routes)
    );
    let gw = start_gateway(world.config(&text)).await;

    let t0 = Instant::now();
    let mut slow_caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    slow_caller
        .send(&invite("+1555", "call-dns-2@platform", "z9hG4bKd2", "atag"))
        .await;
    // Meanwhile a call to a target given by IP goes through: the core is not blocked.
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&invite("+4420", "call-dns-3@platform", "z9hG4bKd3", "btag"))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    c.send(&answer(&inv, 200, "ctag")).await;
    let ok = caller
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(ok.status(), Some(200));

    let r = slow_caller
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(r.status(), Some(503));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "deadline 500 ms, took {took:?}"
    );
}

/// Bad input (issue 14): a target whose DNS never answers falls back to the route's next
/// target within `sip.dns_timeout_ms`, and the caller sees only the second target's answer.
#[tokio::test]
async fn silent_dns_of_the_first_target_fails_over_to_the_next_within_the_deadline() {
    let world = World::new("dns-failover");
    let (silent, _keep) = silent_server().await;
    let callee = Callee::new(&world.callee_leaf).await;
    let routes = format!(
        "[[tenants.routes]]\nprefix = \"\"\ntargets = [{{ uri = \"sips:slow.test\", priority = 1 }}, {{ uri = \"sips:{}\", priority = 2 }}]\nca_file = {:?}\ntry_timeout_ms = 5000\n",
        callee.addr, world.callee_ca_file
    );
    let text = format!(
        "{}\n{}\n{}",
        dns_section(silent, 500),
        world.listener(""),
        tenant(&routes)
    );
    let gw = start_gateway(world.config(&text)).await;

    let t0 = Instant::now();
    let mut caller = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    caller
        .send(&invite("+1555", "call-dns-4@platform", "z9hG4bKd4", "dtag"))
        .await;
    let mut c = callee.accept().await;
    let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
    let reached = t0.elapsed();
    c.send(&answer(&inv, 200, "etag")).await;
    let r = caller
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    assert_eq!(r.status(), Some(200), "the second target answered");
    // The DNS deadline (500 ms), not the try timeout (5 s), moved the call on.
    assert!(reached >= Duration::from_millis(400), "{reached:?}");
    assert!(
        reached < Duration::from_secs(3),
        "failover within the DNS deadline, took {reached:?}"
    );
}
