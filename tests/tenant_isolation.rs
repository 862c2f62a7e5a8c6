//! Tenant isolation end to end over TLS: tenant A floods INVITEs at ten times its
//! calls-per-second limit while tenant B calls at its own limit. Every B call succeeds; A
//! gets its admitted share (rate·t + burst at most) and 503 with Retry-After and a Reason
//! naming the cause for the rest. Plus: the per-source flood guard, the per-connection
//! request rate, and a SIGHUP-style reload that lowers a quota below current usage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_sip::message::{Method, SipMessage};
use sbc_testkit::*;

/// A callee that answers every INVITE 200 and every BYE 200, counting INVITEs.
fn answering_callee(callee: Callee) -> Arc<AtomicUsize> {
    let invites = Arc::new(AtomicUsize::new(0));
    let count = invites.clone();
    tokio::spawn(async move {
        loop {
            let mut conn = callee.accept().await;
            let count = count.clone();
            tokio::spawn(async move {
                while let Some(m) = conn.recv_within(Duration::from_secs(60)).await {
                    match m.method() {
                        Some(Method::Invite) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            conn.send(&answer(&m, 200, "btag")).await;
                        }
                        Some(Method::Bye) => conn.send(&answer(&m, 200, "btag")).await,
                        _ => {}
                    }
                }
            });
        }
    });
    invites
}

struct Outcome {
    ok: usize,
    refused: Vec<SipMessage>,
    other: Vec<u16>,
}

/// Place `n` calls, one every `interval`, each waiting for its final answer; ACK the 2xx.
async fn place_calls(mut peer: Peer, prefix: &str, n: usize, interval: Duration) -> Outcome {
    let start = tokio::time::Instant::now();
    let mut out = Outcome {
        ok: 0,
        refused: Vec::new(),
        other: Vec::new(),
    };
    for i in 0..n {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let call_id = format!("{prefix}-{i}@platform");
        peer.send(&invite(
            "+15551234",
            &call_id,
            &format!("z9hG4bK{prefix}{i}"),
            "atag",
        ))
        .await;
        let fin = peer
            .recv_where(|m| {
                m.status().is_some_and(|s| s >= 200) && m.call_id() == Some(call_id.as_str())
            })
            .await;
        match fin.status() {
            Some(200) => {
                out.ok += 1;
                let to = fin.header("to").unwrap().to_string();
                let ack = in_dialog(
                    "ACK",
                    "sips:sbc@127.0.0.1",
                    &format!("z9hG4bK{prefix}{i}ack"),
                    "\"Alice\" <sips:alice@platform.example>;tag=atag",
                    &to,
                    &call_id,
                    1,
                );
                peer.send(&ack).await;
            }
            Some(503) => out.refused.push(fin),
            Some(code) => out.other.push(code),
            None => unreachable!(),
        }
    }
    out
}

fn tenant_by_san(
    world: &World,
    id: &str,
    san: &str,
    limits: &str,
    callee: std::net::SocketAddr,
) -> String {
    world
        .tenant(id, &format!("client_cert_san = [\"{san}\"]"), "", callee)
        .replace(
            "[[tenants.routes]]",
            &format!("[tenants.limits]\n{limits}\n[[tenants.routes]]"),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_hurt_another() {
    let world = World::new("isolation");
    let callee = Callee::new(&world.callee_leaf).await;
    let callee_addr = callee.addr;
    let invites = answering_callee(callee);
    let limits = "calls_per_second = 5.0\ncall_burst = 5\nmax_concurrent_calls = 1000\nmax_pending_invites = 1000";
    let text = format!(
        "{}\n{}\n{}",
        world.listener(&format!("client_ca = {:?}", world.client_ca_file)),
        tenant_by_san(&world, "tenant-a", "a.trunk.example", limits, callee_addr),
        tenant_by_san(&world, "tenant-b", "b.trunk.example", limits, callee_addr),
    );
    let gw = start_gateway(world.config(&text)).await;
    let a_leaf = world.client_ca.issue(&["a.trunk.example"]);
    let b_leaf = world.client_ca.issue(&["b.trunk.example"]);
    let a = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, Some(&a_leaf)).await;
    let b = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, Some(&b_leaf)).await;

    // Two seconds: A at 50 calls/s (10x its limit), B at 5 calls/s (its limit).
    let started = Instant::now();
    let a_task = tokio::spawn(place_calls(a, "a", 100, Duration::from_millis(20)));
    let b_task = tokio::spawn(place_calls(b, "b", 10, Duration::from_millis(200)));
    let a_out = a_task.await.unwrap();
    let b_out = b_task.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    eprintln!(
        "isolation: {elapsed:.2}s; tenant A: {} admitted, {} refused 503 of 100; tenant B: {} of 10 answered",
        a_out.ok,
        a_out.refused.len(),
        b_out.ok
    );
    assert_eq!(
        b_out.ok, 10,
        "every call of tenant B succeeds: {:?} {:?}",
        b_out.other, b_out.refused
    );
    assert!(
        a_out.other.is_empty(),
        "A gets only 200 or 503: {:?}",
        a_out.other
    );
    assert_eq!(a_out.ok + a_out.refused.len(), 100);
    // A's admitted share: at most rate·t + burst over the time it was sending.
    let bound = (5.0 * elapsed + 5.0).floor() as usize;
    assert!(a_out.ok <= bound, "A admitted {} > {bound}", a_out.ok);
    assert!(a_out.ok >= 10, "A gets its share too: {}", a_out.ok);
    for r in &a_out.refused {
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=2).contains(&retry),
            "Retry-After from the bucket: {retry}"
        );
        assert!(r
            .header("reason")
            .unwrap()
            .contains("tenant call rate limit"));
    }
    // Nothing refused was forwarded.
    assert_eq!(invites.load(Ordering::Relaxed), a_out.ok + b_out.ok);
    gw.shutdown().await;
}

#[tokio::test]
async fn flood_guard_blocks_a_source_and_connection_rate_is_bounded() {
    let world = World::new("flood");
    let callee = Callee::new(&world.callee_leaf).await;
    let callee_addr = callee.addr;
    let _invites = answering_callee(callee);
    let text = format!(
        "[flood_guard]\nwindow_secs = 10\nmax_requests = 30\nblock_secs = 60\naction = \"503\"\n{}\n{}",
        world.listener(""),
        world
            .tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee_addr)
            .replace("[[tenants.routes]]", "[tenants.limits]\nrequests_per_second_per_connection = 10.0\ncalls_per_second = 1000.0\ncall_burst = 1000\n[[tenants.routes]]")
    );
    let gw = start_gateway(world.config(&text)).await;
    let mut peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    // 20 OPTIONS back to back: the connection's bucket (10/s, burst 10) lets ~10 through.
    let mut ok = 0;
    let mut limited = 0;
    let started = Instant::now();
    for i in 0..20 {
        peer.send(&sip(&options_text(&format!("z9hG4bKo{i}"))))
            .await;
        let r = peer.recv().await;
        match r.status() {
            Some(200) => ok += 1,
            Some(503) => {
                assert!(r
                    .header("reason")
                    .unwrap()
                    .contains("connection request rate"));
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // At most the burst plus what refills while we send (rate · elapsed), at least the burst.
    let refill = (10.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(ok >= 10 && ok <= 10 + refill, "ok {ok}, refill {refill}");
    assert!(limited > 0, "the connection's rate is enforced");
    assert_eq!(ok + limited, 20);
    // Keep going past 30 requests in the window: the source is blocked, answered 503
    // with the block time, and stays blocked on a new connection too.
    let mut blocked = 0;
    for i in 20..40 {
        peer.send(&sip(&options_text(&format!("z9hG4bKo{i}"))))
            .await;
        let r = peer.recv().await;
        assert_eq!(r.status(), Some(503));
        if r.header("reason").unwrap().contains("source request rate") {
            blocked += 1;
            assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 59);
        }
    }
    assert_eq!(blocked, 10, "requests 31..40 hit the block");
    let refused = tokio::time::timeout(
        Duration::from_secs(3),
        Peer::try_connect(gw.sip_addrs[0], &world.gw_ca.pem, None, "localhost"),
    )
    .await
    .expect("bounded");
    assert!(
        refused.is_err(),
        "a blocked source cannot open new connections"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_lowers_a_quota_without_dropping_calls() {
    let world = World::new("reload");
    let callee = Callee::new(&world.callee_leaf).await;
    let callee_addr = callee.addr;
    let _invites = answering_callee(callee);
    let with_quota = |max: u32| {
        format!(
            "{}\n{}",
            world.listener(""),
            world
                .tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee_addr)
                .replace(
                    "[[tenants.routes]]",
                    &format!("[tenants.limits]\nmax_concurrent_calls = {max}\n[[tenants.routes]]")
                )
        )
    };
    let gw = start_gateway(world.config(&with_quota(3))).await;
    let peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let out = place_calls(peer, "r", 3, Duration::from_millis(10)).await;
    assert_eq!(out.ok, 3);
    // Lower the quota to 1 below the 3 running calls.
    let mut cfg = world.config(&with_quota(1));
    cfg.listeners[0].address = gw.sip_addrs[0];
    gw.reload(Arc::new(cfg)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.stats().active_calls, 3, "running calls are left alone");
    let peer = Peer::connect(gw.sip_addrs[0], &world.gw_ca.pem, None).await;
    let out = place_calls(peer, "s", 1, Duration::ZERO).await;
    assert_eq!(
        out.refused.len(),
        1,
        "new calls refused while over the lowered quota"
    );
    assert!(out.refused[0]
        .header("reason")
        .unwrap()
        .contains("concurrent call limit"));
    gw.shutdown().await;
}
