//! `[cluster]` against a real Redis on loopback: the admission script's semantics, the
//! latency Redis adds, and three gateway processes sharing one tenant's quotas (call rate
//! at ten times its limit, an exact concurrent-call limit, a SIGKILLed node's leases
//! expiring, Redis stopped and started again).
//!
//! Needs `redis-server` and `redis-sentinel` on PATH; without them every test prints why
//! and passes (`.ci/run`'s cluster stage installs them and runs this binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_cluster::RedisCluster;
use sbc_core::cluster::{ClusterAdmission, ClusterAnswer, ClusterRequest, ClusterVerdict, Ticket};
use sbc_core::config::{ClusterSettings, Limits, RedisEndpoint};
use sbc_core::tenant::TenantId;
use sbc_sip::message::{Method, SipMessage};
use sbc_testkit::pki::Leaf;
use sbc_testkit::process::{Signal, Spawned};
use sbc_testkit::redis::{missing, RedisProcess};
use sbc_testkit::*;

fn skip() -> bool {
    match missing() {
        Some(why) => {
            eprintln!("skipping cluster test: {why}");
            true
        }
        None => false,
    }
}

fn settings(redis: &str, prefix: &str) -> ClusterSettings {
    ClusterSettings {
        node_id: "unit".into(),
        redis: RedisEndpoint::Direct(redis.into()),
        timeout: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(2),
        renew_interval: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(200),
        key_prefix: prefix.into(),
        standby: None,
    }
}

/// A RedisCluster whose answers land in a channel.
async fn direct(
    redis: &str,
    prefix: &str,
) -> (
    Arc<RedisCluster>,
    tokio::sync::mpsc::UnboundedReceiver<ClusterAnswer>,
) {
    let c = RedisCluster::start(settings(redis, prefix));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    c.set_answer_sink(Arc::new(move |a| {
        let _ = tx.send(a);
    }));
    // Exact once the first heartbeat went through.
    let up = process::eventually(Duration::from_secs(5), async || !c.status().fallback).await;
    assert!(up, "the node reaches Redis");
    (c, rx)
}

async fn ask(
    c: &RedisCluster,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ClusterAnswer>,
    n: u64,
    limits: Limits,
) -> ClusterAnswer {
    // The rate part uses its own tenant: a GCRA state made at 1/s is not the one of 1000/s.
    let tenant = if limits.calls_per_second < 10.0 {
        "r"
    } else {
        "t"
    };
    c.request(ClusterRequest {
        ticket: Ticket(n),
        tenant: TenantId::from(tenant),
        limits,
        streams: 0,
    });
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("answer within the deadline")
        .expect("answer")
}

fn limits(cps: f64, burst: u32, max: u32) -> Limits {
    Limits {
        calls_per_second: cps,
        call_burst: burst,
        max_concurrent_calls: max,
        ..Limits::default()
    }
}

#[tokio::test]
async fn admission_script_semantics() {
    if skip() {
        return;
    }
    let dir = files::temp_dir("cluster-script");
    let redis = RedisProcess::server(&dir);
    let (c, mut rx) = direct(&redis.addr(), "u1").await;

    // GCRA: a burst of 3 at 1/s, then a refusal saying how long to wait.
    let l = limits(1.0, 3, 100);
    let mut leases = Vec::new();
    for i in 0..3 {
        let a = ask(&c, &mut rx, i, l).await;
        assert_eq!(a.mode, sbc_core::cluster::DecisionMode::Exact);
        match a.verdict {
            ClusterVerdict::Admit(g) => leases.push(g),
            ClusterVerdict::Refuse(r) => panic!("call {i} refused: {r:?}"),
        }
    }
    match ask(&c, &mut rx, 3, l).await.verdict {
        ClusterVerdict::Refuse(r) => {
            assert_eq!(r.cause, sbc_core::admission::RefusalCause::CallRate);
            assert!(r.retry_after > Duration::from_millis(900), "{r:?}");
            assert!(r.retry_after <= Duration::from_millis(1000), "{r:?}");
        }
        ClusterVerdict::Admit(_) => panic!("4th call of a burst of 3 admitted"),
    }
    assert_eq!(
        c.usage(&TenantId::from("r")).await.map(|u| u.cluster_calls),
        Some(3)
    );
    leases.clear();
    let l = limits(1000.0, 1000, 3);
    for i in 4..7 {
        match ask(&c, &mut rx, i, l).await.verdict {
            ClusterVerdict::Admit(g) => leases.push(g),
            ClusterVerdict::Refuse(r) => panic!("call {i} refused: {r:?}"),
        }
    }

    // Concurrency: a limit of 3 with 3 leases held refuses; a released lease frees it.
    match ask(&c, &mut rx, 10, l).await.verdict {
        ClusterVerdict::Refuse(r) => {
            assert_eq!(r.cause, sbc_core::admission::RefusalCause::ConcurrentCalls)
        }
        ClusterVerdict::Admit(_) => panic!("4th concurrent call admitted"),
    }
    leases.pop();
    let freed = process::eventually(Duration::from_secs(2), async || {
        c.usage(&TenantId::from("t")).await.map(|u| u.cluster_calls) == Some(2)
    })
    .await;
    assert!(freed, "a dropped lease is removed from Redis");
    match ask(&c, &mut rx, 11, l).await.verdict {
        ClusterVerdict::Admit(g) => leases.push(g),
        ClusterVerdict::Refuse(r) => panic!("refused after release: {r:?}"),
    }

    // An expired lease (a dead node's) does not count: the script removes it.
    let reply = redis.command("ZADD u1:calls:{t} 1 ghost:1").unwrap();
    assert!(reply.contains(":1"), "{reply}");
    leases.pop();
    process::eventually(Duration::from_secs(2), async || {
        c.usage(&TenantId::from("t")).await.map(|u| u.cluster_calls) == Some(2)
    })
    .await;
    match ask(&c, &mut rx, 12, l).await.verdict {
        ClusterVerdict::Admit(g) => leases.push(g),
        ClusterVerdict::Refuse(r) => panic!("an expired lease counted: {r:?}"),
    }
    let card = redis.command("ZCARD u1:calls:{t}").unwrap();
    assert!(card.contains(":3"), "ghost removed, 3 live: {card}");

    // Leases are renewed past their 2 s TTL while held.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        c.usage(&TenantId::from("t")).await.map(|u| u.cluster_calls),
        Some(3)
    );
    drop(leases);
}

/// Media-stream leases in the admission script: a limit of 4 streams, calls of 2.
#[tokio::test]
async fn stream_leases_semantics() {
    if skip() {
        return;
    }
    let dir = files::temp_dir("cluster-streams");
    let redis = RedisProcess::server(&dir);
    let (c, mut rx) = direct(&redis.addr(), "u2").await;
    let tenant = TenantId::from("s");
    let l = Limits {
        max_media_streams: 4,
        ..limits(1000.0, 1000, 100)
    };
    let mut ask_streams = async |n: u64, streams: u32| {
        c.request(ClusterRequest {
            ticket: Ticket(n),
            tenant: tenant.clone(),
            limits: l,
            streams,
        });
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("answer within the deadline")
            .expect("answer")
    };
    let mut held = Vec::new();
    for i in 0..2 {
        match ask_streams(i, 2).await.verdict {
            ClusterVerdict::Admit(g) => held.push(g),
            ClusterVerdict::Refuse(r) => panic!("call {i} refused: {r:?}"),
        }
    }
    match ask_streams(2, 2).await.verdict {
        ClusterVerdict::Refuse(r) => {
            assert_eq!(r.cause, sbc_core::admission::RefusalCause::MediaStreams);
            assert_eq!(r.retry_after, sbc_core::admission::QUOTA_RETRY_AFTER);
        }
        ClusterVerdict::Admit(_) => panic!("a 5th and 6th stream admitted past 4"),
    }
    // Nothing was leased for the refused call; one stream more does not fit either, a
    // call without media does.
    let card = redis.command("ZCARD u2:streams:{s}").unwrap();
    assert!(card.contains(":4"), "4 stream leases: {card}");
    assert!(matches!(
        ask_streams(3, 1).await.verdict,
        ClusterVerdict::Refuse(_)
    ));
    match ask_streams(4, 0).await.verdict {
        ClusterVerdict::Admit(g) => held.push(g),
        ClusterVerdict::Refuse(r) => panic!("a call without streams refused: {r:?}"),
    }
    let u = c.usage(&tenant).await.expect("usage");
    assert_eq!((u.cluster_calls, u.cluster_streams), (3, 4));
    assert_eq!((u.node_calls, u.node_streams), (3, 4));
    assert_eq!(
        sbc_core::cluster::ClusterInfo::node_streams(&*c, &tenant),
        4
    );

    // Ending a call releases its streams' leases with its call lease.
    held.remove(0);
    let freed = process::eventually(Duration::from_secs(2), async || {
        c.usage(&tenant)
            .await
            .is_some_and(|u| (u.cluster_calls, u.cluster_streams) == (2, 2))
    })
    .await;
    assert!(freed, "a dropped call's stream leases are removed");
    match ask_streams(5, 2).await.verdict {
        ClusterVerdict::Admit(g) => held.push(g),
        ClusterVerdict::Refuse(r) => panic!("refused after release: {r:?}"),
    }

    // Expired stream members (a dead node's) do not count: the script removes them.
    redis
        .command("ZADD u2:streams:{s} 1 ghost:1:1 1 ghost:1:2")
        .unwrap();
    held.remove(0);
    process::eventually(Duration::from_secs(2), async || {
        c.usage(&tenant).await.map(|u| u.cluster_streams) == Some(2)
    })
    .await;
    match ask_streams(6, 2).await.verdict {
        ClusterVerdict::Admit(g) => held.push(g),
        ClusterVerdict::Refuse(r) => panic!("an expired stream lease counted: {r:?}"),
    }
    let card = redis.command("ZCARD u2:streams:{s}").unwrap();
    assert!(card.contains(":4"), "ghosts removed, 4 live: {card}");

    // Stream leases are renewed past their 2 s TTL while held.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let u = c.usage(&tenant).await.expect("usage");
    assert_eq!((u.cluster_calls, u.cluster_streams), (3, 4));
    held.clear();
    let gone = process::eventually(Duration::from_secs(2), async || {
        c.usage(&tenant)
            .await
            .is_some_and(|u| (u.cluster_calls, u.cluster_streams) == (0, 0))
    })
    .await;
    assert!(gone, "every lease released");

    // Streams added mid-call (a re-INVITE offering more m-lines): checked without Redis,
    // leased asynchronously, counted by the next admission, released with the call.
    let mut grown = match ask_streams(20, 1).await.verdict {
        ClusterVerdict::Admit(g) => g,
        ClusterVerdict::Refuse(r) => panic!("refused: {r:?}"),
    };
    grown.grow_streams(3, 4).expect("1 + 2 of 4 streams");
    grown
        .grow_streams(2, 4)
        .expect("fewer streams change nothing");
    let r = grown.grow_streams(5, 4).expect_err("3 + 2 of 4 streams");
    assert_eq!(r.cause, sbc_core::admission::RefusalCause::MediaStreams);
    let added = process::eventually(Duration::from_secs(2), async || {
        c.usage(&tenant).await.map(|u| u.cluster_streams) == Some(3)
    })
    .await;
    assert!(added, "added streams reach Redis without anyone waiting");
    assert!(
        matches!(ask_streams(21, 2).await.verdict, ClusterVerdict::Refuse(r) if r.cause == sbc_core::admission::RefusalCause::MediaStreams),
        "a new call sees the added streams"
    );
    match ask_streams(22, 1).await.verdict {
        ClusterVerdict::Admit(g) => held.push(g),
        ClusterVerdict::Refuse(r) => panic!("the 4th stream refused: {r:?}"),
    }
    // Renewed with the call past the TTL.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.usage(&tenant).await.map(|u| u.cluster_streams), Some(4));
    drop(grown);
    drop(held);
    let gone = process::eventually(Duration::from_secs(2), async || {
        c.usage(&tenant)
            .await
            .is_some_and(|u| (u.cluster_calls, u.cluster_streams) == (0, 0))
    })
    .await;
    assert!(gone, "added streams released with their call");
}

/// The admission latency Redis adds, on loopback: `cargo test --test cluster_redis
/// redis_latency -- --nocapture` prints p50 / p99 of request → answer.
#[tokio::test]
async fn redis_latency() {
    if skip() {
        return;
    }
    let dir = files::temp_dir("cluster-latency");
    let redis = RedisProcess::server(&dir);
    let (c, mut rx) = direct(&redis.addr(), "lat").await;
    let l = limits(1e6, 1_000_000, 1_000_000);
    let mut samples = Vec::new();
    let mut held = Vec::new();
    for i in 0..2000u64 {
        let t0 = Instant::now();
        let a = ask(&c, &mut rx, i, l).await;
        samples.push(t0.elapsed());
        assert_eq!(a.mode, sbc_core::cluster::DecisionMode::Exact, "call {i}");
        held.push(a);
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "cluster admission latency over loopback Redis (2000 sequential): p50 {:?} p99 {:?} max {:?}",
        p(0.5),
        p(0.99),
        samples[samples.len() - 1]
    );
    assert!(p(0.5) < Duration::from_millis(50));
}

// ---------- three gateway processes ----------

const TTL_SECS: u64 = 3;
const TOKEN: &str = "ops-token-0123456789abcdef";

fn leaf_for(world: &World, name: &str) -> Leaf {
    world.client_ca.issue(&[name])
}

fn node_config(world: &World, i: usize, redis: &str, callee: SocketAddr, prefix: &str) -> String {
    node_config_with(world, i, &format!("redis = \"{redis}\""), callee, prefix)
}

fn node_config_with(
    world: &World,
    i: usize,
    redis: &str,
    callee: SocketAddr,
    prefix: &str,
) -> String {
    let tenant = |id: &str, limits: &str| {
        format!(
            "{}[tenants.limits]\n{limits}\n",
            world.tenant(
                id,
                &format!("client_cert_san = [\"{id}.example\"]"),
                "",
                callee
            )
        )
    };
    format!(
        "[media]\nenabled = false\n{LOOPBACK_FLOOD_GUARD}\
[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n\
[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n\
[cluster]\nnode_id = \"n{i}\"\n{redis}\nlease_ttl_secs = {TTL_SECS}\nrenew_secs = 1\nheartbeat_ms = 200\nkey_prefix = \"{prefix}\"\n\
{}\n{}{}{}",
        world.dir.join(format!("audit-{i}.log")),
        sbc_admin::token_sha256_hex(TOKEN),
        world.listener(&format!("client_ca = {:?}", world.client_ca_file)),
        tenant(
            "noisy",
            "calls_per_second = 5.0\ncall_burst = 5\nmax_concurrent_calls = 1000\nmax_pending_invites = 1000\nrequests_per_second_per_connection = 10000.0"
        ),
        tenant(
            "held",
            "calls_per_second = 1000.0\ncall_burst = 1000\nmax_concurrent_calls = 20\nmax_pending_invites = 1000\nrequests_per_second_per_connection = 10000.0"
        ),
        tenant(
            "calm",
            "calls_per_second = 1000.0\ncall_burst = 1000\nmax_concurrent_calls = 1000\nmax_pending_invites = 1000\nrequests_per_second_per_connection = 10000.0"
        ),
    ) + &tenant(
        "streamy",
        "calls_per_second = 1000.0\ncall_burst = 1000\nmax_concurrent_calls = 1000\nmax_pending_invites = 1000\nrequests_per_second_per_connection = 10000.0\nmax_media_streams = 4",
    )
}

/// The route target of every tenant: `hold...` numbers ring (180) and stay in setup,
/// others are busy (486) at once. A CANCEL gets 200 and the INVITE 487.
fn serve_callee(callee: Callee) {
    tokio::spawn(async move {
        // Bounded: the test ends long before.
        let until = Instant::now() + Duration::from_secs(300);
        while Instant::now() < until {
            let Some(mut conn) = callee.accept_within(Duration::from_secs(1)).await else {
                continue;
            };
            tokio::spawn(async move {
                let mut invites: HashMap<String, SipMessage> = HashMap::new();
                // Ends when the gateway goes away (the tests SIGKILL nodes).
                while let Some(m) = conn.recv_or_closed_within(Duration::from_secs(120)).await {
                    match m.method() {
                        Some(Method::Invite) => {
                            let hold = m.request_uri().is_some_and(|u| u.contains(":hold"));
                            if hold {
                                conn.send(&answer(&m, 180, "ctag")).await;
                                invites.insert(m.call_id().unwrap_or("").to_string(), m);
                            } else {
                                conn.send(&answer(&m, 486, "ctag")).await;
                            }
                        }
                        Some(Method::Cancel) => {
                            conn.send(&answer(&m, 200, "ctag")).await;
                            if let Some(inv) = invites.remove(m.call_id().unwrap_or("")) {
                                conn.send(&answer(&inv, 487, "ctag")).await;
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
}

struct Caller {
    peer: Peer,
    n: u64,
    tag: String,
}

impl Caller {
    async fn new(addr: SocketAddr, world: &World, leaf: &Leaf, tag: &str) -> Caller {
        Caller {
            peer: Peer::connect(addr, &world.gw_ca.pem, Some(leaf)).await,
            n: 0,
            tag: tag.into(),
        }
    }

    /// Place a call to `user`: its first response past 100 (180 for a held call, 486 or
    /// 503 for the others).
    async fn call(&mut self, user: &str) -> u16 {
        self.n += 1;
        let call_id = format!("{}-{}@platform", self.tag, self.n);
        self.peer
            .send(&invite(
                user,
                &call_id,
                &format!("z9hG4bK{}x{}", self.tag, self.n),
                "atag",
            ))
            .await;
        let r = self
            .peer
            .recv_where(|m| {
                m.status().is_some_and(|s| s > 100) && m.call_id() == Some(call_id.as_str())
            })
            .await;
        r.status().unwrap_or(0)
    }

    /// Place a held call offering `sdp`: the first response past 100.
    async fn call_sdp(&mut self, sdp: &str) -> SipMessage {
        self.n += 1;
        let call_id = format!("{}-{}@platform", self.tag, self.n);
        let inv = invite(
            "hold1",
            &call_id,
            &format!("z9hG4bK{}x{}", self.tag, self.n),
            "atag",
        );
        self.peer.send(&media::with_sdp(inv, sdp)).await;
        self.peer
            .recv_where(|m| {
                m.status().is_some_and(|s| s > 100) && m.call_id() == Some(call_id.as_str())
            })
            .await
    }

    /// Place `n` held calls: how many ring (admitted).
    async fn hold(&mut self, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            match self.call("hold1").await {
                180 => ok += 1,
                503 => {}
                s => panic!("held call answered {s}"),
            }
        }
        ok
    }
}

/// Calls of `noisy` from every caller at `per_node` calls/s each for `dur`: (admitted,
/// placed, seconds from the first call to the last).
async fn rate_run(
    callers: Vec<Caller>,
    per_node: f64,
    dur: Duration,
) -> (Vec<Caller>, usize, usize, f64) {
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let n = (per_node * dur.as_secs_f64()) as u32;
    let interval = Duration::from_secs_f64(1.0 / per_node);
    let mut tasks = Vec::new();
    for mut c in callers {
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..n {
                tokio::time::sleep_until(start + interval * i).await;
                match c.call("5551000").await {
                    486 => ok += 1,
                    503 => {}
                    s => panic!("rate call answered {s}"),
                }
            }
            (c, ok)
        }));
    }
    let mut back = Vec::new();
    let mut admitted = 0;
    for t in tasks {
        let (c, ok) = t.await.unwrap();
        admitted += ok;
        back.push(c);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let placed = n as usize * back.len();
    (back, admitted, placed, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_tenants_quotas() {
    if skip() {
        return;
    }
    let world = World::new("cluster-three");
    let mut redis = RedisProcess::server(&world.dir);
    let callee = Callee::new(&world.callee_leaf).await;
    let callee_addr = callee.addr;
    serve_callee(callee);
    let gws: Vec<Spawned> = (0..3)
        .map(|i| {
            let file = world.dir.join(format!("n{i}.toml"));
            std::fs::write(
                &file,
                node_config(&world, i, &redis.addr(), callee_addr, "e2e"),
            )
            .unwrap();
            Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[])
        })
        .collect();
    for g in &gws {
        g.logged(&["cluster_fallback_left"], Duration::from_secs(10))
            .await;
    }
    let noisy = leaf_for(&world, "noisy.example");
    let held = leaf_for(&world, "held.example");
    let calm = leaf_for(&world, "calm.example");
    let mut noisy_callers = Vec::new();
    for (i, g) in gws.iter().enumerate() {
        noisy_callers.push(Caller::new(g.printed.sip, &world, &noisy, &format!("noisy{i}")).await);
    }

    // 1. Ten times the call rate (5/s, burst 5) spread over three nodes.
    let (noisy_callers, admitted, placed, t) =
        rate_run(noisy_callers, 50.0 / 3.0, Duration::from_secs(4)).await;
    let bound = 5.0 * t + 5.0;
    println!(
        "rate, exact: {admitted} of {placed} admitted in {t:.2} s; bound rate*t+burst = {bound:.1}"
    );
    assert!((admitted as f64) <= bound, "{admitted} > {bound}");
    assert!(
        (admitted as f64) >= 5.0 * t * 0.7,
        "admission not closed: {admitted}"
    );

    // 2. A concurrent-call limit of 20, exact across nodes.
    let mut h: Vec<Caller> = Vec::new();
    for (i, g) in gws.iter().enumerate() {
        h.push(Caller::new(g.printed.sip, &world, &held, &format!("held{i}")).await);
    }
    assert_eq!(h[0].hold(20).await, 20, "node 0 takes the whole limit");
    assert_eq!(h[1].hold(5).await, 0, "node 1 sees node 0's calls");
    assert_eq!(h[2].hold(5).await, 0, "node 2 sees node 0's calls");
    println!("concurrency, exact: 20 of 30 admitted (limit 20)");

    // 3. SIGKILL node 0 holding 20 calls: its leases expire within the TTL.
    gws[0].signal(Signal::SIGKILL);
    let killed = Instant::now();
    let mut freed_after = None;
    while killed.elapsed() < Duration::from_secs(TTL_SECS + 5) {
        if h[1].hold(1).await == 1 {
            freed_after = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let freed_after = freed_after.expect("slots freed after the node died");
    println!("slots of a SIGKILLed node free again after {freed_after:?} (TTL {TTL_SECS} s)");
    assert!(freed_after <= Duration::from_secs(TTL_SECS) + Duration::from_millis(1500));
    // Every lease of the dead node was renewed last before it died: all are gone by
    // kill + TTL (plus scheduling).
    tokio::time::sleep_until(
        (killed + Duration::from_secs(TTL_SECS) + Duration::from_millis(300)).into(),
    )
    .await;
    let more = h[1].hold(11).await;
    if more != 11 {
        panic!(
            "{more} of 11 after the TTL; node 1 logs:\n{}",
            gws[1].lines_with(&["refused"]).join("\n")
        );
    }
    println!("all 20 slots free {:?} after the SIGKILL", killed.elapsed());
    let more = h[2].hold(10).await;
    if more != 8 {
        panic!(
            "{more} of 10 on node 2 (8 expected); node 2 logs:\n{}\nredis: {:?}",
            gws[2].lines_with(&["refused"]).join("\n"),
            redis.command("ZRANGE e2e:calls:{held} 0 -1 WITHSCORES")
        );
    }

    // The usage API shows the cluster-wide count and this node's part.
    let (status, body) = http(
        gws[1].printed.admin,
        "GET",
        "/v1/tenants/held/usage",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cluster"]["active_calls"], 20, "{body}");
    assert_eq!(v["cluster"]["node_active_calls"], 12, "{body}");
    assert_eq!(v["cluster"]["live_nodes"], 2, "{body}");
    assert_eq!(v["cluster"]["fallback"], false, "{body}");

    // 4. Redis stopped: the local share (what each node held plus its part of the
    // headroom: none) holds the tenant at its limit; other tenants go on.
    // (One heartbeat, 200 ms, for every node to learn the cluster-wide counts: the share
    // starts from them.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    for g in &gws[1..] {
        g.logged(&["cluster_fallback_entered"], Duration::from_secs(5))
            .await;
    }
    let (status, body) = http(gws[1].printed.admin, "GET", "/readyz", None, "").await;
    assert_eq!(status, 200);
    assert!(body.contains("local share"), "{body}");
    assert_eq!(h[1].hold(5).await, 0, "node 1 at its share");
    assert_eq!(h[2].hold(5).await, 0, "node 2 at its share");
    let mut c1 = Caller::new(gws[1].printed.sip, &world, &calm, "calm1").await;
    for _ in 0..6 {
        assert_eq!(
            c1.call("5552000").await,
            486,
            "another tenant's calls go on"
        );
    }
    let live: Vec<Caller> = noisy_callers.into_iter().skip(1).collect();
    let (_, admitted, placed, t) = rate_run(live, 25.0, Duration::from_secs(3)).await;
    let bound = 5.0 * t + 5.0 + 5.0;
    println!("rate, Redis down (local share): {admitted} of {placed} admitted in {t:.2} s; bound rate*t+2*burst = {bound:.1}");
    assert!((admitted as f64) <= bound, "{admitted} > {bound}");
    assert!(admitted > 0, "never closed");

    // 5. Redis back (empty): leases are re-added by their owners, exact again.
    redis.restart();
    for g in &gws[1..] {
        g.logged(
            &["cluster_fallback_left", "Redis answering again"],
            Duration::from_secs(10),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Node 1's 12 calls end with its caller's connection.
    drop(h.remove(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok = h[1].hold(14).await;
    println!("concurrency after Redis restart: {ok} of 14 admitted with 8 held (limit 20)");
    assert_eq!(ok, 12, "exact again after Redis restart");
    assert!(
        gws[1].lines_with(&["cluster_fallback_entered"]).len() == 1,
        "logged once per episode"
    );
    drop(gws);
}

/// A Sentinel promotion under load: the master is SIGKILLed while a gateway places calls;
/// the sentinel promotes the replica, the gateway follows it without a restart, and no
/// call of the tenant is refused meanwhile (the local share bridges the gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_promotion_is_followed_without_restart() {
    if skip() {
        return;
    }
    let world = World::new("cluster-sentinel");
    let mut master = RedisProcess::server(&world.dir);
    let replica = RedisProcess::replica(&world.dir, master.port);
    // Redis 7 delays a replica's first sync by 5 s: wait for the link before killing.
    assert!(
        replica.wait_info("master_link_status:up", Duration::from_secs(20)),
        "replica never synced"
    );
    let sentinel = RedisProcess::sentinel(&world.dir, master.port, "sbcmaster");
    // The sentinel learns the replica from the master's INFO (every 10 s at first).
    let known = process::eventually(Duration::from_secs(20), async || {
        sentinel
            .command("SENTINEL replicas sbcmaster")
            .is_some_and(|r| r.contains(&replica.port.to_string()))
    })
    .await;
    assert!(known, "sentinel never saw the replica");
    let callee = Callee::new(&world.callee_leaf).await;
    let callee_addr = callee.addr;
    serve_callee(callee);
    let file = world.dir.join("n0.toml");
    let redis = format!(
        "sentinels = [\"{}\"]\nmaster_name = \"sbcmaster\"",
        sentinel.addr()
    );
    std::fs::write(
        &file,
        node_config_with(&world, 0, &redis, callee_addr, "sent"),
    )
    .unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    gw.logged(&["cluster_fallback_left"], Duration::from_secs(10))
        .await;
    let calm = leaf_for(&world, "calm.example");
    let mut caller = Caller::new(gw.printed.sip, &world, &calm, "sent").await;
    let held = leaf_for(&world, "held.example");
    let mut holder = Caller::new(gw.printed.sip, &world, &held, "senth").await;
    assert_eq!(holder.hold(3).await, 3);

    // Load: 20 calls/s, bounded to 30 s, stopping 2 s after the gateway is exact again
    // on the promoted replica.
    let started = Instant::now();
    let mut killed_at = None;
    let mut back_at: Option<Instant> = None;
    let (mut ok, mut refused) = (0, 0);
    while started.elapsed() < Duration::from_secs(30) {
        match caller.call("5553000").await {
            486 => ok += 1,
            503 => refused += 1,
            s => panic!("call answered {s}"),
        }
        if killed_at.is_none() && started.elapsed() > Duration::from_secs(1) {
            master.kill();
            killed_at = Some(Instant::now());
        }
        if killed_at.is_some()
            && back_at.is_none()
            && !gw
                .lines_with(&["cluster_connected", &format!(":{}", replica.port)])
                .is_empty()
            && gw.lines_with(&["cluster_fallback_left"]).len() >= 2
        {
            back_at = Some(Instant::now());
        }
        if back_at.is_some_and(|b| b.elapsed() > Duration::from_secs(2)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = killed_at.expect("master killed");
    let back_at = back_at
        .unwrap_or_else(|| panic!("gateway never followed the promotion; logs:\n{}", gw.logs()));
    println!(
        "sentinel promotion: exact again on the promoted replica {:?} after the master died; {ok} calls admitted, {refused} refused",
        back_at - killed_at
    );
    assert_eq!(
        refused, 0,
        "no call of a tenant under its limits refused during failover"
    );
    // The leases held through the failover are on the new master (renewed there).
    let card = replica
        .command("ZCARD sent:calls:{held}")
        .unwrap_or_default();
    assert!(
        card.contains(":3"),
        "held calls' leases on the new master: {card}"
    );
    // Exact there: the limit of 20 counts the 3 held calls.
    assert_eq!(holder.hold(20).await, 17);
}

/// An SDP offer opening two SRTP audio streams.
fn two_streams() -> String {
    let second = "m=audio 49172 RTP/SAVP 0 101
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz
a=rtpmap:101 telephone-event/8000
";
    format!("{}{second}", sip::SDP).replace('\n', "\r\n")
}

/// A tenant's `max_media_streams = 4` across two gateways (media anchored), calls of two
/// streams each: two calls cluster-wide, the third refused 503; one ends, a new one gets
/// in; a SIGKILLed node's stream leases are free again within the lease TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_stream_limit_is_cluster_wide() {
    if skip() {
        return;
    }
    let world = World::new("cluster-streams-e2e");
    let redis = RedisProcess::server(&world.dir);
    let callee = Callee::new(&world.callee_leaf).await;
    let callee_addr = callee.addr;
    serve_callee(callee);
    let gws: Vec<Spawned> = (0..2)
        .map(|i| {
            let (lo, hi) = ports::free_udp_range(100);
            let media = format!(
                "[media]\naddress = \"127.0.0.1\"\nport_min = {lo}\nport_max = {hi}\nworkers = 1\ntimeout_secs = 120\n"
            );
            let file = world.dir.join(format!("n{i}.toml"));
            let text = node_config(&world, i, &redis.addr(), callee_addr, "st")
                .replacen("[media]\nenabled = false\n", &media, 1);
            std::fs::write(&file, text).unwrap();
            Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[])
        })
        .collect();
    for g in &gws {
        g.logged(&["cluster_fallback_left"], Duration::from_secs(10))
            .await;
    }
    let leaf = leaf_for(&world, "streamy.example");
    let sdp = two_streams();
    assert_eq!(sbc_core::cluster::offer_streams(sdp.as_bytes()), 2);
    let mut a0 = Caller::new(gws[0].printed.sip, &world, &leaf, "sa0").await;
    let mut b1 = Caller::new(gws[1].printed.sip, &world, &leaf, "sb1").await;
    let mut c0 = Caller::new(gws[0].printed.sip, &world, &leaf, "sc0").await;
    let status = |m: &SipMessage| m.status().unwrap_or(0);
    assert_eq!(status(&a0.call_sdp(&sdp).await), 180, "call 1 on node 0");
    assert_eq!(status(&b1.call_sdp(&sdp).await), 180, "call 2 on node 1");
    let r = c0.call_sdp(&sdp).await;
    assert_eq!(status(&r), 503, "call 3: streams 5 and 6 of 4");
    let reason = r.header("reason").unwrap_or_default().to_string();
    assert!(reason.contains("tenant media stream limit"), "{reason}");
    let retry = sbc_core::admission::QUOTA_RETRY_AFTER
        .as_secs()
        .max(1)
        .to_string();
    assert_eq!(r.header("retry-after"), Some(retry.as_str()));
    let r = b1.call_sdp(&sdp).await;
    assert_eq!(status(&r), 503, "node 1 sees node 0's streams");
    println!("media streams, exact: 2 calls of 2 streams admitted of 4 (limit 4 streams)");

    // The usage API: streams cluster-wide and this node's.
    let (code, body) = http(
        gws[0].printed.admin,
        "GET",
        "/v1/tenants/streamy/usage",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cluster"]["media_streams"], 4, "{body}");
    assert_eq!(v["cluster"]["node_media_streams"], 2, "{body}");
    assert_eq!(v["cluster"]["active_calls"], 2, "{body}");

    // Node 1's call ends with its caller's connection: a new call on node 0 gets in.
    drop(b1);
    let ended = Instant::now();
    let mut admitted = false;
    while ended.elapsed() < Duration::from_secs(5) {
        match status(&c0.call_sdp(&sdp).await) {
            180 => {
                admitted = true;
                break;
            }
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            s => panic!("call answered {s}"),
        }
    }
    assert!(admitted, "streams of an ended call free again");
    println!(
        "streams of an ended call free again after {:?}",
        ended.elapsed()
    );
    assert_eq!(status(&c0.call_sdp(&sdp).await), 503, "limit exact again");

    // SIGKILL node 0 holding 4 stream leases: free within the lease TTL.
    gws[0].signal(Signal::SIGKILL);
    let killed = Instant::now();
    let mut d1 = Caller::new(gws[1].printed.sip, &world, &leaf, "sd1").await;
    let mut freed_after = None;
    while killed.elapsed() < Duration::from_secs(TTL_SECS + 5) {
        match status(&d1.call_sdp(&sdp).await) {
            180 => {
                freed_after = Some(killed.elapsed());
                break;
            }
            503 => tokio::time::sleep(Duration::from_millis(200)).await,
            s => panic!("call answered {s}"),
        }
    }
    let freed_after = freed_after.expect("stream leases of the dead node expire");
    println!(
        "stream leases of a SIGKILLed node free again after {freed_after:?} (TTL {TTL_SECS} s)"
    );
    assert!(freed_after <= Duration::from_secs(TTL_SECS) + Duration::from_millis(1500));
    tokio::time::sleep_until(
        (killed + Duration::from_secs(TTL_SECS) + Duration::from_millis(300)).into(),
    )
    .await;
    assert_eq!(status(&d1.call_sdp(&sdp).await), 180, "all 4 streams free");
    assert_eq!(status(&d1.call_sdp(&sdp).await), 503, "and the limit holds");
    drop(gws);
}
