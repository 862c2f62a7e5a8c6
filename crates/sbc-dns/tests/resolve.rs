//! RFC 3263 resolution against a DNS server on loopback (sbc_testkit::dns): the
//! NAPTR → SRV → A chain, SRV priority and weights, the A/AAAA fallback, TTL expiry, and
//! hostile answers (slow, empty, CNAME loop, huge) ending in an error within the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sbc_dns::order::MAX_CANDIDATES;
use sbc_dns::{DnsConfig, DnsError, Resolver, Scheme, TargetName, Transport};
use sbc_testkit::dns::{silent_server, DnsServer, ManualClock};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sips(host: &str) -> TargetName {
    TargetName {
        scheme: Scheme::Sips,
        host: host.into(),
        port: None,
        transport: None,
    }
}

fn resolver(server: SocketAddr, timeout_ms: u64) -> Resolver {
    Resolver::new(&DnsConfig {
        servers: vec![server],
        timeout: Duration::from_millis(timeout_ms),
    })
    .unwrap()
}

fn addrs(c: &[sbc_dns::Candidate]) -> Vec<SocketAddr> {
    c.iter().map(|c| c.addr).collect()
}

#[tokio::test]
async fn naptr_then_srv_then_a() {
    let dns = DnsServer::start().await;
    dns.add_naptr("trunk.test", 10, 10, "SIP+D2U", "_sip._udp.trunk.test", 300);
    dns.add_naptr(
        "trunk.test",
        20,
        10,
        "SIPS+D2T",
        "_sips._tcp.trunk.test",
        300,
    );
    dns.add_srv(
        "_sips._tcp.trunk.test",
        10,
        1,
        5071,
        "edge1.trunk.test",
        300,
    );
    dns.add_srv("_sip._udp.trunk.test", 10, 1, 5070, "edge2.trunk.test", 300);
    dns.add_a("edge1.trunk.test", ip("127.0.0.11"), 300);
    dns.add_a("edge1.trunk.test", ip("::1"), 300);
    dns.add_a("edge2.trunk.test", ip("127.0.0.12"), 300);
    let r = resolver(dns.addr, 2000);

    // sips: only SIPS+D2T is followed.
    let c = r.candidates(&sips("trunk.test")).await.unwrap();
    assert_eq!(addrs(&c), [sa("127.0.0.11:5071"), sa("[::1]:5071")]);
    assert!(c.iter().all(|c| c.transport == Transport::Tls));
    assert_eq!(c[0].srv_target.as_deref(), Some("edge1.trunk.test"));
    assert_eq!(dns.queries("trunk.test", RecordType::NAPTR), 1);
    assert_eq!(dns.queries("_sip._udp.trunk.test", RecordType::SRV), 0);

    // sip: both, in NAPTR order (UDP first).
    let mut sip = sips("trunk.test");
    sip.scheme = Scheme::Sip;
    let c = r.candidates(&sip).await.unwrap();
    assert_eq!(
        c.iter().map(|c| (c.addr, c.transport)).collect::<Vec<_>>(),
        [
            (sa("127.0.0.12:5070"), Transport::Udp),
            (sa("127.0.0.11:5071"), Transport::Tls),
            (sa("[::1]:5071"), Transport::Tls)
        ]
    );
    assert_eq!(
        dns.queries("trunk.test", RecordType::NAPTR),
        1,
        "second lookup served by the cache"
    );

    // A port in the URI: A/AAAA only, no NAPTR or SRV.
    dns.add_a("pbx.test", ip("127.0.0.13"), 300);
    let mut with_port = sips("pbx.test");
    with_port.port = Some(5999);
    let c = r.candidates(&with_port).await.unwrap();
    assert_eq!(addrs(&c), [sa("127.0.0.13:5999")]);
    assert_eq!(dns.queries("pbx.test", RecordType::NAPTR), 0);
    assert_eq!(dns.queries("_sips._tcp.pbx.test", RecordType::SRV), 0);

    // A numeric IP: no DNS at all.
    let before = dns.total_queries();
    let c = r.candidates(&sips("192.0.2.7")).await.unwrap();
    assert_eq!(addrs(&c), [sa("192.0.2.7:5061")]);
    assert_eq!(dns.total_queries(), before);
}

#[tokio::test]
async fn srv_priority_and_weights() {
    let dns = DnsServer::start().await;
    // No NAPTR: SRV directly. Priority 10 holds a (weight 3) and b (weight 1); c is the
    // priority-20 backup.
    dns.add_srv(
        "_sips._tcp.carrier.test",
        10,
        3,
        5061,
        "a.carrier.test",
        300,
    );
    dns.add_srv(
        "_sips._tcp.carrier.test",
        10,
        1,
        5062,
        "b.carrier.test",
        300,
    );
    dns.add_srv(
        "_sips._tcp.carrier.test",
        20,
        0,
        5063,
        "c.carrier.test",
        300,
    );
    dns.add_a("a.carrier.test", ip("127.0.0.21"), 300);
    dns.add_a("b.carrier.test", ip("127.0.0.22"), 300);
    dns.add_a("c.carrier.test", ip("127.0.0.23"), 300);
    let r = resolver(dns.addr, 2000);
    let mut rng = StdRng::seed_from_u64(42);
    let mut first: HashMap<SocketAddr, u32> = HashMap::new();
    for _ in 0..2000 {
        let c = r
            .candidates_with_rng(&sips("carrier.test"), &mut rng)
            .await
            .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[2].addr, sa("127.0.0.23:5063"), "priority 20 always last");
        assert_eq!((c[2].priority, c[2].weight), (20, 0));
        *first.entry(c[0].addr).or_default() += 1;
    }
    let a = first[&sa("127.0.0.21:5061")];
    let b = first[&sa("127.0.0.22:5062")];
    assert_eq!(a + b, 2000);
    // Weight 3:1 with RFC 2782's draw of 0..=sum (0..=4): a first for 0..=3, 4/5 = 80 %.
    assert!((1500..=1700).contains(&a), "a first {a}, b first {b}");
    assert!(b >= 300, "b first {b}");
    // Same seed, same order.
    let one = r
        .candidates_with_rng(&sips("carrier.test"), &mut StdRng::seed_from_u64(9))
        .await
        .unwrap();
    let two = r
        .candidates_with_rng(&sips("carrier.test"), &mut StdRng::seed_from_u64(9))
        .await
        .unwrap();
    assert_eq!(one, two);
}

#[tokio::test]
async fn no_naptr_no_srv_falls_back_to_a_and_aaaa_on_default_port() {
    let dns = DnsServer::start().await;
    dns.add_a("plain.test", ip("127.0.0.31"), 300);
    dns.add_a("plain.test", ip("::1"), 300);
    let r = resolver(dns.addr, 2000);
    let c = r.candidates(&sips("plain.test")).await.unwrap();
    assert_eq!(addrs(&c), [sa("127.0.0.31:5061"), sa("[::1]:5061")]);
    assert_eq!(
        (c[0].priority, c[0].weight, c[0].srv_target.clone()),
        (0, 0, None)
    );
    assert_eq!(dns.queries("_sips._tcp.plain.test", RecordType::SRV), 1);

    let mut udp = sips("plain.test");
    udp.scheme = Scheme::Sip;
    let c = r.candidates(&udp).await.unwrap();
    assert_eq!(c[0].addr, sa("127.0.0.31:5060"));
    assert_eq!(
        c[0].transport,
        Transport::Udp,
        "RFC 3263 §4.1: UDP for sip:"
    );

    let err = r.candidates(&sips("nothing.test")).await.unwrap_err();
    assert!(matches!(err, DnsError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn cache_keeps_answers_for_their_ttl_then_asks_again() {
    let dns = DnsServer::start().await;
    dns.add_srv("_sips._tcp.ttl.test", 10, 1, 5061, "h.ttl.test", 60);
    dns.add_a("h.ttl.test", ip("127.0.0.41"), 60);
    let clock = ManualClock::new();
    let r = Resolver::with_clock(
        &DnsConfig {
            servers: vec![dns.addr],
            timeout: Duration::from_secs(2),
        },
        clock.clone(),
    )
    .unwrap();
    let c = r.candidates(&sips("ttl.test")).await.unwrap();
    assert_eq!(addrs(&c), [sa("127.0.0.41:5061")]);
    assert_eq!(dns.queries("h.ttl.test", RecordType::A), 1);

    // The address changes; within the TTL the cached one is used.
    dns.remove("h.ttl.test", RecordType::A);
    dns.add_a("h.ttl.test", ip("127.0.0.42"), 60);
    clock.advance(Duration::from_secs(59));
    let c = r.candidates(&sips("ttl.test")).await.unwrap();
    assert_eq!(addrs(&c), [sa("127.0.0.41:5061")]);
    assert_eq!(dns.queries("h.ttl.test", RecordType::A), 1);

    // Past the TTL: asked again, new address.
    clock.advance(Duration::from_secs(2));
    let c = r.candidates(&sips("ttl.test")).await.unwrap();
    assert_eq!(addrs(&c), [sa("127.0.0.42:5061")]);
    assert_eq!(dns.queries("h.ttl.test", RecordType::A), 2);

    // Negative answers are cached too (short): NAPTR was asked once per expiry.
    assert_eq!(dns.queries("ttl.test", RecordType::NAPTR), 2);
}

#[tokio::test]
async fn silent_server_fails_within_the_deadline() {
    let (addr, _keep) = silent_server().await;
    let r = resolver(addr, 300);
    let t0 = Instant::now();
    let err = r.candidates(&sips("slow.test")).await.unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, DnsError::Timeout(_)), "{err:?}");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(
        took < Duration::from_millis(1300),
        "deadline 300 ms, took {took:?}"
    );
    // The failure is cached briefly: the next call does not wait the deadline again.
    let t1 = Instant::now();
    let err = r.candidates(&sips("slow.test")).await.unwrap_err();
    assert!(matches!(err, DnsError::Timeout(_)), "{err:?}");
    assert!(
        t1.elapsed() < Duration::from_millis(100),
        "{:?}",
        t1.elapsed()
    );
}

#[tokio::test]
async fn empty_answer_is_not_found() {
    let dns = DnsServer::start().await;
    // The name exists (it has a TXT-less NAPTR elsewhere) but holds no SRV, A or AAAA:
    // NOERROR with no answer everywhere.
    dns.add_naptr("empty.test", 10, 10, "E2U+email", "x.empty.test", 300);
    dns.add_srv("_sips._tcp.dot.test", 10, 1, 5061, ".", 300);
    let r = resolver(dns.addr, 2000);
    let err = r.candidates(&sips("empty.test")).await.unwrap_err();
    assert!(matches!(err, DnsError::NotFound(_)), "{err:?}");
    // SRV "." (service decidedly not offered): not found, no A fallback.
    let err = r.candidates(&sips("dot.test")).await.unwrap_err();
    assert!(matches!(err, DnsError::NotFound(_)), "{err:?}");
    assert_eq!(dns.queries("dot.test", RecordType::A), 0);
}

#[tokio::test]
async fn cname_loop_is_a_bounded_error() {
    let dns = DnsServer::start().await;
    dns.add_srv("_sips._tcp.loop.test", 10, 1, 5061, "l1.loop.test", 300);
    dns.add_cname("l1.loop.test", "l2.loop.test", 300);
    dns.add_cname("l2.loop.test", "l1.loop.test", 300);
    // A short chain is fine.
    dns.add_srv("_sips._tcp.chain.test", 10, 1, 5061, "c1.chain.test", 300);
    dns.add_cname("c1.chain.test", "c2.chain.test", 300);
    dns.add_a("c2.chain.test", ip("127.0.0.51"), 300);
    let r = resolver(dns.addr, 2000);
    let t0 = Instant::now();
    let err = r.candidates(&sips("loop.test")).await.unwrap_err();
    assert!(matches!(err, DnsError::CnameChain(_)), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(
        dns.queries("l1.loop.test", RecordType::A) <= 8,
        "bounded queries: {}",
        dns.queries("l1.loop.test", RecordType::A)
    );
    let c = r.candidates(&sips("chain.test")).await.unwrap();
    assert_eq!(addrs(&c), [sa("127.0.0.51:5061")]);
}

#[tokio::test]
async fn huge_answer_is_capped() {
    let dns = DnsServer::start().await;
    for i in 0..200u16 {
        dns.add_srv(
            "_sips._tcp.huge.test",
            10,
            1,
            6000 + i,
            &format!("h{i}.huge.test"),
            300,
        );
        dns.add_a(&format!("h{i}.huge.test"), ip("127.0.0.61"), 300);
    }
    for i in 0..100u8 {
        dns.add_a("many.huge.test", IpAddr::from([127, 0, 1, i]), 300);
    }
    dns.add_srv("_sips._tcp.wide.test", 10, 1, 5061, "many.huge.test", 300);
    let r = resolver(dns.addr, 3000);
    let c = r.candidates(&sips("huge.test")).await.unwrap();
    assert!(!c.is_empty() && c.len() <= MAX_CANDIDATES, "{}", c.len());
    assert!(
        dns.total_queries() <= 2 + 2 + 2 * sbc_dns::order::MAX_SRV_TARGETS,
        "queries bounded: {}",
        dns.total_queries()
    );
    let c = r.candidates(&sips("wide.test")).await.unwrap();
    assert_eq!(c.len(), sbc_dns::order::MAX_ADDRS_PER_HOST);
}

#[tokio::test]
async fn sips_with_udp_is_refused_and_bad_names_are_errors() {
    let dns = DnsServer::start().await;
    let r = resolver(dns.addr, 2000);
    let mut t = sips("x.test");
    t.transport = Some(Transport::Udp);
    assert!(matches!(
        r.candidates(&t).await,
        Err(DnsError::BadTransport(_))
    ));
    assert!(matches!(
        r.candidates(&sips("bad..name")).await,
        Err(DnsError::BadName(_))
    ));
}
